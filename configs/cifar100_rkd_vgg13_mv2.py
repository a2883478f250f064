"""CIFAR-100 relational KD (Park et al. 2019), vgg13 -> MobileNetV2: a baseline of the mdistiller toolbox."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # The original ships this method's config for resnet32x4 -> resnet8x4 only: this pair keeps
    # the method's defaults, the original's CFG.RKD (default_config.py), restated here,
    # with the toolbox's learning rate for MobileNet students.
    config.method = "rkd"
    config.student.arch = "MobileNetV2"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.teacher.arch = "vgg13"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_vgg13.py")
    config.optim.lr = 0.01  # the toolbox's lr for MobileNet/ShuffleNet students
    config.rkd.distance_weight = 25.0
    config.rkd.angle_weight = 50.0
    config.rkd.feat_weight = 1.0
    return config
