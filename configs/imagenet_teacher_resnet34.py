"""ImageNet resnet34 trained alone (vanilla): a teacher for when no pretrained weights are used.

The ImageNet distillation configs use torchvision's published resnet34 instead; this config is
their `teacher.config`, trained only with `--config.teacher.train_if_missing=True`.
"""

from catkd_jax import config_files
from catkd_jax import default_config as default

imagenet_recipe = config_files.sibling(__file__, "imagenet_res34_res18").imagenet_recipe


def get_config():
    config = imagenet_recipe(default.get_config())
    config.method = "vanilla"
    config.student.arch = "imagenet_resnet34"
    config.student.classifier_bias = True  # like torchvision's published networks
    return config
