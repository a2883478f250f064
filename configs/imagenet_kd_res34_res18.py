"""ImageNet Hinton KD baseline, ResNet34 -> ResNet18 (a comparison row of the paper's Table 3)."""

from catkd_jax import config_files

imagenet_res34_res18 = config_files.sibling(__file__, "imagenet_res34_res18")


def get_config():
    config = imagenet_res34_res18.get_config()
    # mdistiller's ImageNet KD settings for this pair: temperature 1, CE and KD weighted 0.5.
    config.method = "kd"
    config.student.classifier_bias = True  # KD students keep the biased linear classifier
    config.kd.temperature = 1.0
    config.kd.ce_weight = 0.5
    config.kd.kd_weight = 0.5
    return config
