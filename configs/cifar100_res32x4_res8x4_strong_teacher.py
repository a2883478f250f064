"""CIFAR-100 CAT-KD, strong resnet32x4 (TrivialAugment) -> resnet8x4 (paper Table 4).

The student's recipe and CAT-KD's hyper-parameters are the usual pair's (the paper does not
change them for the strong teacher); only the teacher differs. Pass its checkpoint with
--config.teacher.checkpoint, or let it be trained first (--config.teacher.train_if_missing=True).
"""

from catkd_jax import config_files

pair = config_files.sibling(__file__, "cifar100_res32x4_res8x4")


def get_config():
    config = pair.get_config()
    config.teacher.config = config_files.beside(__file__, "cifar100_teacher_resnet32x4_trivial_augment.py")
    return config
