"""CIFAR-100 OFD (Heo et al. 2019), resnet32x4 -> resnet8x4: the original's `configs/cifar100/ofd.yaml`."""

from catkd_jax import config_files

cat_kd_pair = config_files.sibling(__file__, "cifar100_res32x4_res8x4")


def get_config():
    # The pair's networks, teacher config and lr (0.05) are its CAT-KD config's; OFD's section is
    # CFG.OFD's defaults (default_config.py), which the yaml keeps.
    config = cat_kd_pair.get_config()
    config.method = "ofd"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.teacher.fold_batch_norm = False  # OFD runs the teacher in training mode, as the original
    return config
