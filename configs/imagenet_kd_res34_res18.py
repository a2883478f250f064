"""ImageNet Hinton KD baseline, ResNet34 -> ResNet18 (a comparison row of the paper's Table 3)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import imagenet_res34_res18  # noqa: E402  pylint: disable=wrong-import-position


def get_config():
    config = imagenet_res34_res18.get_config()
    # mdistiller's ImageNet KD settings for this pair: temperature 1, CE and KD weighted 0.5.
    config.method = "kd"
    config.student.classifier_bias = True  # KD students keep the biased linear classifier
    config.kd.temperature = 1.0
    config.kd.ce_weight = 0.5
    config.kd.kd_weight = 0.5
    return config
