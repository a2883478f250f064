"""CIFAR-100 CAT only, binarised teacher CAMs, resnet32x4 -> resnet32x4 (binarisation study)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # noqa: E402  pylint: disable=wrong-import-position


def get_config():
    config = default.get_config()
    # "CAT": class attention transfer alone, without cross-entropy. Numbers: the CAT-only
    # studies of shared/reference/original_settings.md (CE weight 0, normalize, r 2).
    config.method = "cat_kd"
    config.student.arch = "resnet32x4"  # CAM-head student: classifier_bias False (default)
    config.teacher.arch = "resnet32x4"
    config.teacher.config = "configs/cifar100_teacher_resnet32x4.py"
    config.cat_kd.ce_weight = 0.0  # onlyCAT
    config.cat_kd.normalize = True
    config.cat_kd.resolution = 2
    config.cat_kd.beta = 300.0  # CAT_loss_weight with binarised teacher CAMs
    config.cat_kd.binarize = True  # IF_BINARIZE
    return config
