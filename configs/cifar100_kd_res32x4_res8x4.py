"""CIFAR-100 Hinton KD baseline, resnet32x4 -> resnet8x4 (a comparison row of the paper)."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # Every number below: the usual settings of the mdistiller toolbox for this pair (with the
    # 240-epoch SGD recipe of the default).
    config.method = "kd"
    config.student.arch = "resnet8x4"
    config.student.classifier_bias = True  # KD students keep the biased linear classifier
    config.teacher.arch = "resnet32x4"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_resnet32x4.py")
    config.optim.lr = 0.05
    config.kd.temperature = 4.0
    config.kd.ce_weight = 0.1
    config.kd.kd_weight = 0.9
    return config
