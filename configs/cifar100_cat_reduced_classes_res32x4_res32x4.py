"""CIFAR-100 CAT only, 99 training classes, resnet32x4 -> resnet32x4 (reduced-data study)."""

from catkd_jax import config_files

cat_only = config_files.sibling(__file__, "cifar100_cat_res32x4_res32x4")


def get_config():
    # The CAT-only study (CE weight 0, normalised 2x2 CAMs, resnet32x4 -> resnet32x4), changed
    # as below (docs/original_settings.md).
    config = cat_only.get_config()
    config.cat_kd.beta = 50.0  # CAT_loss_weight of the reduced-training-set study
    config.data.reserved_classes = 99  # train on the first 99 classes ...
    config.data.reserved_rate = 1.0  # ... with all their images
    return config
