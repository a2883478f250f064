"""ImageNet attention transfer baseline, ResNet34 -> ResNet18: the original's `configs/imagenet/r34_r18/at.yaml`."""

from catkd_jax import config_files

imagenet_pair = config_files.sibling(__file__, "imagenet_res34_res18")


def get_config():
    config = imagenet_pair.get_config()
    # The yaml sets no AT section: CFG.AT's defaults (default_config.py); the recipe is the pair's.
    config.method = "at"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    return config
