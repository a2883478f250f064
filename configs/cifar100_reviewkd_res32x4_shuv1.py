"""CIFAR-100 ReviewKD baseline (Chen et al. 2021), resnet32x4 -> ShuffleV1: the original CAT-KD code's CFG.REVIEWKD."""

from catkd_jax import config_files

cat_kd_pair = config_files.sibling(__file__, "cifar100_res32x4_shuv1")


def get_config():
    # The original ships ReviewKD's yaml for resnet32x4 -> resnet8x4 only, but its CFG.REVIEWKD
    # defaults (default_config.py's, restated here) are this pair's lists; as for the other
    # methods without a yaml for a pair, the weights stay CFG's and the lr is the toolbox's for
    # ShuffleNet students, 0.01 (the pair's CAT-KD config's, whose networks and teacher it takes).
    config = cat_kd_pair.get_config()
    config.method = "reviewkd"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.reviewkd.shapes = (1, 4, 8, 16)
    config.reviewkd.out_shapes = (1, 8, 16, 32)
    config.reviewkd.in_channels = (240, 480, 960, 960)
    config.reviewkd.out_channels = (64, 128, 256, 256)
    config.reviewkd.reviewkd_weight = 1.0
    return config
