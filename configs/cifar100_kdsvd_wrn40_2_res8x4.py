"""CIFAR-100 KD with SVD (Lee et al. 2018), wrn_40_2 -> resnet8x4: a baseline of the mdistiller toolbox.

KDSVD compares singular vectors of maps of equal widths, stage by stage: the paper's other
cross-family pairs (MobileNet and ShuffleNet students, VGG teachers) have none, and the original
fails on them; a WideResNet teacher's stages match a CIFAR ResNet's.
"""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # The original ships this method's config for resnet32x4 -> resnet8x4 only: this pair keeps
    # the method's defaults, the original's CFG.KDSVD (default_config.py), restated here.
    config.method = "kdsvd"
    config.student.arch = "resnet8x4"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.teacher.arch = "wrn_40_2"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_wrn_40_2.py")
    config.optim.lr = 0.05
    config.kdsvd.k = 1
    config.kdsvd.feat_weight = 1.0
    return config
