"""ImageNet DKD baseline, ResNet34 -> ResNet18 (a comparison row of the paper's Table 3)."""

from catkd_jax import config_files

imagenet_res34_res18 = config_files.sibling(__file__, "imagenet_res34_res18")


def get_config():
    config = imagenet_res34_res18.get_config()
    # mdistiller's ImageNet DKD settings for this pair (Zhao et al. 2022, Table 10).
    config.method = "dkd"
    config.student.classifier_bias = True  # DKD students keep the biased linear classifier
    config.dkd.ce_weight = 1.0
    config.dkd.alpha = 0.5
    config.dkd.beta = 0.5
    config.dkd.temperature = 1.0
    config.dkd.warmup_epochs = 1
    return config
