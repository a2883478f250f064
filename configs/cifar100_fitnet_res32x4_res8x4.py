"""CIFAR-100 FitNet (Romero et al. 2015), resnet32x4 -> resnet8x4: a baseline of the mdistiller toolbox."""

from catkd_jax import config_files
from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # Every number below: the original's `configs/cifar100/fitnet.yaml` for this pair, with
    # the method's fields at the original's CFG.FITNET defaults (default_config.py), restated here.
    config.method = "fitnet"
    config.student.arch = "resnet8x4"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.teacher.arch = "resnet32x4"
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_resnet32x4.py")
    config.optim.lr = 0.05
    config.fitnet.hint_layer = 2
    config.fitnet.feat_weight = 100.0
    return config
