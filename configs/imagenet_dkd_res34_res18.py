"""ImageNet DKD baseline, ResNet34 -> ResNet18 (a comparison row of the paper's Table 3): the original's
`configs/imagenet/r34_r18/dkd.yaml`."""

from catkd_jax import config_files

imagenet_res34_res18 = config_files.sibling(__file__, "imagenet_res34_res18")


def get_config():
    config = imagenet_res34_res18.get_config()
    # The original's DKD section for this pair on its CFG.DKD defaults: the yaml does not set
    # ALPHA, so it is CFG.DKD.ALPHA, 1.0.
    config.method = "dkd"
    config.student.classifier_bias = True  # DKD students keep the biased linear classifier
    config.dkd.ce_weight = 1.0
    config.dkd.alpha = 1.0
    config.dkd.beta = 0.5
    config.dkd.temperature = 1.0
    config.dkd.warmup_epochs = 1
    return config
