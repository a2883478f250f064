"""CIFAR-100 DKD baseline, vgg13 -> MobileNetV2: the original's `configs/cifar100/dkd/vgg13_mv2.yaml`."""

from catkd_jax import config_files

cat_kd_pair = config_files.sibling(__file__, "cifar100_vgg13_mv2")


def get_config():
    # The pair's networks, teacher config and lr are its CAT-KD config's (the original's yamls of
    # both methods agree on them); DKD's section is CFG.DKD's defaults (default_config.py) but
    # for the pair's beta (the DKD table of docs/original_settings.md).
    config = cat_kd_pair.get_config()
    config.method = "dkd"
    config.student.classifier_bias = True  # DKD students keep the biased linear classifier
    config.dkd.beta = 6.0  # the pair's yaml sets it
    return config
