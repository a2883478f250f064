"""ImageNet Hinton KD baseline, ResNet50 -> MobileNet: the original's `configs/imagenet/r50_mv2/kd.yaml`."""

from catkd_jax import config_files

imagenet_res50_mobilenet = config_files.sibling(__file__, "imagenet_res50_mobilenet")


def get_config():
    config = imagenet_res50_mobilenet.get_config()
    # The yaml's KD section: temperature 1, CE and KD weighted 0.5; the recipe is the pair's.
    config.method = "kd"
    config.student.classifier_bias = True  # KD students keep the biased linear classifier
    config.kd.temperature = 1.0
    config.kd.ce_weight = 0.5
    config.kd.kd_weight = 0.5
    return config
