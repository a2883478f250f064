"""CIFAR-100 DKD baseline, resnet32x4 -> ShuffleV1: the original's `configs/cifar100/dkd/res32x4_shuv1.yaml`."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # The original's config of this pair (the DKD table of docs/original_settings.md) on its
    # CFG.DKD defaults; the rest of the 240-epoch SGD recipe is the default's.
    config.method = "dkd"
    config.student.arch = "ShuffleV1"
    config.student.classifier_bias = True  # DKD students keep the biased linear classifier
    config.teacher.arch = "resnet32x4"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_resnet32x4.py")
    config.optim.lr = 0.01  # MobileNet/ShuffleNet student
    config.dkd.alpha = 1.0  # weight of target-class KD (TCKD)
    config.dkd.beta = 8.0  # weight of non-target-class KD (NCKD): CFG.DKD.BETA, which the pair's config keeps
    config.dkd.temperature = 4.0
    config.dkd.ce_weight = 1.0
    config.dkd.warmup_epochs = 20  # the KD terms ramp up linearly over the first 20 epochs
    return config
