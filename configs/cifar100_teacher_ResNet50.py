"""CIFAR-100 teacher ResNet50, trained alone (a teacher of the paper's CIFAR-100 tables)."""

from catkd_jax import default_config as default


def get_config():
    config = default.get_config()
    # Cross-entropy only, with the 240-epoch SGD recipe of the default (the recipe of
    # docs/original_settings.md and of the mdistiller toolbox's teachers).
    config.method = "vanilla"
    config.student.arch = "ResNet50"
    config.student.classifier_bias = True  # published teachers have a biased linear classifier
    config.optim.lr = 0.05  # the mdistiller toolbox's vanilla CIFAR-100 recipe
    return config
