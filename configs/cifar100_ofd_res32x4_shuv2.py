"""CIFAR-100 OFD (Heo et al. 2019), resnet32x4 -> ShuffleV2: a baseline of the mdistiller toolbox."""

from catkd_jax import config_files

cat_kd_pair = config_files.sibling(__file__, "cifar100_res32x4_shuv2")


def get_config():
    # The original ships OFD's config for resnet32x4 -> resnet8x4 only: this pair keeps CFG.OFD's
    # defaults (default_config.py), with its CAT-KD config's networks, teacher config and lr (0.01,
    # the toolbox's for ShuffleNet students).
    config = cat_kd_pair.get_config()
    config.method = "ofd"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.teacher.fold_batch_norm = False  # OFD runs the teacher in training mode, as the original
    return config
