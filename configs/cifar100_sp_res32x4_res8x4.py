"""CIFAR-100 similarity-preserving KD (Tung & Mori 2019), resnet32x4 -> resnet8x4: a baseline of the mdistiller toolbox."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # Every number below: the original's `configs/cifar100/sp.yaml` for this pair, with
    # the method's fields at the original's CFG.SP defaults (default_config.py), restated here.
    config.method = "sp"
    config.student.arch = "resnet8x4"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.teacher.arch = "resnet32x4"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_resnet32x4.py")
    config.optim.lr = 0.05
    config.sp.feat_weight = 3000.0
    return config
