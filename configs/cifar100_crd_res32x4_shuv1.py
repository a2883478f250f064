"""CIFAR-100 CRD (Tian et al. 2020), resnet32x4 -> ShuffleV1: a baseline of the mdistiller toolbox."""

from catkd_jax import config_files

cat_kd_pair = config_files.sibling(__file__, "cifar100_res32x4_shuv1")


def get_config():
    # The original ships CRD's config for resnet32x4 -> resnet8x4 only; CFG.CRD's defaults
    # (default_config.py) fit this pair (FEAT.STUDENT_DIM 960 and TEACHER_DIM 256 are ShuffleV1's
    # and resnet32x4's pooled widths). Networks, teacher config and lr (0.01, the toolbox's for
    # ShuffleNet students) are the pair's CAT-KD config's.
    config = cat_kd_pair.get_config()
    config.method = "crd"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    return config
