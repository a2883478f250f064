"""CIFAR-100 resnet32 trained alone (the paper appendix's students-alone baseline)."""

from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # Cross-entropy only, with the 240-epoch SGD recipe of the default (the recipe of
    # docs/original_settings.md and of the mdistiller toolbox).
    config.method = "vanilla"
    config.student.arch = "resnet32"
    config.student.classifier_bias = True  # the usual biased linear classifier
    config.optim.lr = 0.05  # the mdistiller toolbox's vanilla CIFAR-100 recipe
    return config
