"""CIFAR-100 CAT only, binarised teacher CAMs, resnet32x4 -> resnet32x4 (binarisation study)."""

from catkd_jax import config_files

cat_only = config_files.sibling(__file__, "cifar100_cat_res32x4_res32x4")


def get_config():
    # The CAT-only study (CE weight 0, normalised 2x2 CAMs, resnet32x4 -> resnet32x4), changed
    # as below (docs/original_settings.md).
    config = cat_only.get_config()
    config.cat_kd.beta = 300.0  # CAT_loss_weight with binarised teacher CAMs
    config.cat_kd.binarize = True  # IF_BINARIZE
    return config
