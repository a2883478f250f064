"""CIFAR-100 CAT-KD, vgg13 -> vgg8 (paper Tables 1-2, CAT-KD row)."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # Every number below: the original CAT-KD config of this pair (the pair table of
    # docs/original_settings.md); the rest of the SGD recipe is the default's.
    config.method = "cat_kd"
    config.student.arch = "vgg8"  # CAM-head student: classifier_bias False (default)
    config.teacher.arch = "vgg13"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_vgg13.py")
    config.optim.lr = 0.05  # original config
    config.cat_kd.beta = 4.5  # CAT_loss_weight
    config.cat_kd.resolution = 2  # CAM_RESOLUTION
    config.cat_kd.normalize = False  # IF_NORMALIZE
    return config
