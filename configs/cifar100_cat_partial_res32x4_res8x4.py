"""CIFAR-100 CAT only, some classes' CAMs, resnet32x4 -> resnet8x4 (partial-CAM study)."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # "CAT": class attention transfer alone, without cross-entropy. Numbers: the CAT-only
    # studies of docs/original_settings.md (CE weight 0, normalize, r 2).
    config.method = "cat_kd"
    config.student.arch = "resnet8x4"  # CAM-head student: classifier_bias False (default)
    config.teacher.arch = "resnet32x4"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_resnet32x4.py")
    config.cat_kd.ce_weight = 0.0  # onlyCAT
    config.cat_kd.normalize = True
    config.cat_kd.resolution = 2
    config.cat_kd.beta = 300.0  # CAT_loss_weight when transferring only some classes' CAMs
    config.cat_kd.num_cams = 75  # 75 classes' CAMs per image ...
    config.cat_kd.cam_strategy = "bottom"  # ... those with the lowest teacher scores
    return config
