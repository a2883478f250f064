"""ImageNet resnet50 trained alone (vanilla): a teacher for when no pretrained weights are used.

The same recipe as `imagenet_teacher_resnet34.py`; see there.
"""

from catkd_jax import config_files

imagenet_teacher_resnet34 = config_files.sibling(__file__, "imagenet_teacher_resnet34")


def get_config():
    config = imagenet_teacher_resnet34.get_config()
    config.student.arch = "imagenet_resnet50"
    return config
