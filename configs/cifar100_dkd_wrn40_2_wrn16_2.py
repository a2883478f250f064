"""CIFAR-100 DKD baseline, wrn_40_2 -> wrn_16_2: the original's `configs/cifar100/dkd/wrn40_2_wrn_16_2.yaml`."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # The original's config of this pair (the DKD table of docs/original_settings.md) on its
    # CFG.DKD defaults; the rest of the 240-epoch SGD recipe is the default's.
    config.method = "dkd"
    config.student.arch = "wrn_16_2"
    config.student.classifier_bias = True  # DKD students keep the biased linear classifier
    config.teacher.arch = "wrn_40_2"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_wrn_40_2.py")
    config.optim.lr = 0.05
    config.dkd.alpha = 1.0  # weight of target-class KD (TCKD)
    config.dkd.beta = 6.0  # weight of non-target-class KD (NCKD): set by the pair's config
    config.dkd.temperature = 4.0
    config.dkd.ce_weight = 1.0
    config.dkd.warmup_epochs = 20  # the KD terms ramp up linearly over the first 20 epochs
    return config
