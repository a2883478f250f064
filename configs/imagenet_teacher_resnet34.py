"""ImageNet resnet34 trained alone (vanilla): a teacher for when no pretrained weights are used.

The ImageNet distillation configs use torchvision's published resnet34 instead; this config is
their `teacher.config`, trained only with `--config.teacher.train_if_missing=True`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # noqa: E402  pylint: disable=wrong-import-position
from configs.imagenet_res34_res18 import imagenet_recipe  # noqa: E402  pylint: disable=wrong-import-position


def get_config():
    config = imagenet_recipe(default.get_config())
    config.method = "vanilla"
    config.student.arch = "imagenet_resnet34"
    config.student.classifier_bias = True  # like torchvision's published networks
    return config
