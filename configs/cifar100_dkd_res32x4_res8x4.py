"""CIFAR-100 DKD baseline, resnet32x4 -> resnet8x4 (a comparison row of the paper)."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # Every number below: the usual settings of the mdistiller toolbox for this pair (with the
    # 240-epoch SGD recipe of the default).
    config.method = "dkd"
    config.student.arch = "resnet8x4"
    config.student.classifier_bias = True  # DKD students keep the biased linear classifier
    config.teacher.arch = "resnet32x4"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_resnet32x4.py")
    config.optim.lr = 0.05
    config.dkd.alpha = 1.0  # weight of target-class KD (TCKD)
    config.dkd.beta = 8.0  # weight of non-target-class KD (NCKD), the resnet32x4 pair's value
    config.dkd.temperature = 4.0
    config.dkd.ce_weight = 1.0
    config.dkd.warmup_epochs = 20  # DKD weight ramps up linearly over the first 20 epochs
    return config
