"""ImageNet resnet50 trained alone (vanilla): a teacher for when no pretrained weights are used.

The same recipe as `imagenet_teacher_resnet34.py`; see there.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import imagenet_teacher_resnet34  # noqa: E402  pylint: disable=wrong-import-position


def get_config():
    config = imagenet_teacher_resnet34.get_config()
    config.student.arch = "imagenet_resnet50"
    return config
