"""ImageNet architectures of the CAT-KD ImageNet experiments: ResNet18/34/50 and MobileNetV1.

The ResNets are torchvision's (which mdistiller's ImageNet ResNets load their teachers from):
a 7x7 stride-2 stem, a 3x3 stride-2 max pool, four stages (64, 128, 256, 512 planes; stride
1, 2, 2, 2) of basic or bottleneck (expansion 4, stride on the 3x3 conv: "v1.5") blocks, with
the projection called `downsample`. MobileNetV1 is mdistiller's `models/imagenet/mobilenetv1.py`
(the students' "MobileNet"; in the CAT-KD code `models/imagenet/mobilenetv2.py`, named
`MobileNetV2`, with the CAM-head `MobileNetV2_test`): a 3x3 stride-2 stem and 13
depthwise-separable blocks, all one `nn.Sequential` called `model`. Both downsample by 32, so
`features` is `[N, 7, 7, K]` for the 224x224 inputs of ImageNet training (K = 512, 2048 or
1024) and the classifier is `fc`.

Stages (`catkd_jax.models.stages`), as mdistiller's ImageNet networks: the ResNets' feats are the
stem's ReLU output (before the max pool) and each stage's output; their preact_feats are the
stem's ReLU output too (the original keeps the BatchNorm output, which its in-place ReLU then
overwrites) and each stage's output before its ReLU. MobileNetV1's are the pointwise BatchNorm
outputs of blocks 3, 5, 11 and 13, after / before their ReLU. The CAM-head networks (`ResNet*_test`,
`MobileNetV2_test`) return the CAMs as their only feats and no pooled_feat; here pooled_feat is
the logits, as for every other CAM-head network.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.models.layers import (
    BatchNorm,
    Dtype,
    classify,
    conv,
    kaiming_normal_fan_out,
    torch_default_kernel_init,
)
from catkd_jax.models.resnet import BasicBlock
from catkd_jax.models.resnet_v2 import Bottleneck, four_stages, last_block_norms
from catkd_jax.models.stages import Path, record_stages


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """`nn.MaxPool2d(3, stride=2, padding=1)`: `[N, H, W, K] -> [N, ceil(H / 2), ceil(W / 2), K]`.

    Flax pads a max pool with -inf, as PyTorch does, so the padding never wins the max.
    """
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ImageNetResNet(nn.Module):
    """`__call__(x [N, 224, 224, 3], train) -> (logits [N, C], features [N, 7, 7, 512 * e])`.

    `e` is the block's expansion: 1 for ResNet18/34, 4 for ResNet50. `features` is the ReLU
    output of the last block (torchvision's input to `avgpool`).
    """

    block: Callable[..., nn.Module]  # BasicBlock or Bottleneck, projection named 'downsample'
    num_blocks: Sequence[int]  # per stage
    num_classes: int = 1000
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "fc"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        x = x.astype(self.dtype)
        x = conv(64, 7, stride=2, padding=3, dtype=self.dtype, name="conv1")(x)
        stem = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
        x = _max_pool_3x3_s2(stem)
        outputs, preacts = four_stages(x, self.block, self.num_blocks, train, self.dtype)
        x = outputs[-1]
        # torchvision and mdistiller keep PyTorch's default Linear init for `fc`, which `classify`
        # defaults to; mdistiller's CAM-head ResNet*_test makes `conv_test` before its init loop,
        # which draws it like every conv.
        logits = classify(
            x,
            self.num_classes,
            use_bias=self.classifier_bias,
            dtype=self.dtype,
            cam_head_kernel_init=kaiming_normal_fan_out,
        )
        record_stages(self, (stem, *outputs), (stem, *preacts), x, logits, cam_placement="only")
        return logits, x

    def original_stage_channels(self) -> tuple[int, ...]:
        return (256, 512, 1024, 2048)  # the original's, also for ResNet18/34

    def original_bn_before_relu(self) -> tuple[Path, ...]:
        return last_block_norms(self.block, self.num_blocks)[1:]  # the original leaves layer1's out


# (output channels, stride) of mdistiller's 13 depthwise-separable blocks, `model.1` ... `model.13`.
_MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# The blocks whose pointwise BatchNorm outputs the original returns as (pre-activation) feats.
_MOBILENET_V1_FEATURE_BLOCKS = (3, 5, 11, 13)


class MobileNetV1(nn.Module):
    """`__call__(x [N, 224, 224, 3], train) -> (logits [N, C], features [N, 7, 7, 1024])`.

    Module names are the reference's `nn.Sequential` indices: `model.0.0`/`model.0.1` the stem
    conv/BN, `model.k.0`/`model.k.1` block k's depthwise conv/BN and `model.k.3`/`model.k.4` its
    pointwise conv/BN (indices 2 and 5 are the parameter-free ReLUs). `features` is the ReLU
    output of the last block. The reference sets no init, so convs get PyTorch's default.
    """

    num_classes: int = 1000
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "fc"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        conv_ = functools.partial(conv, dtype=self.dtype, kernel_init=torch_default_kernel_init)
        x = x.astype(self.dtype)
        x = conv_(32, 3, stride=2, name="model.0.0")(x)
        x = nn.relu(norm("model.0.1")(x))
        preact_feats = []
        for index, (channels, stride) in enumerate(_MOBILENET_V1_BLOCKS, start=1):
            # Depthwise (one 3x3 filter per channel), then pointwise 1x1 mixing the channels.
            width = x.shape[-1]
            x = conv_(width, 3, stride=stride, groups=width, name=f"model.{index}.0")(x)
            x = nn.relu(norm(f"model.{index}.1")(x))
            x = conv_(channels, 1, padding=0, name=f"model.{index}.3")(x)
            x = norm(f"model.{index}.4")(x)
            if index in _MOBILENET_V1_FEATURE_BLOCKS:
                preact_feats.append(x)
            x = nn.relu(x)
        # The reference's AvgPool2d(7) is the global average pool at 224x224; `fc` and the CAM
        # head `conv_test` keep PyTorch's defaults (`classify`'s).
        logits = classify(x, self.num_classes, use_bias=self.classifier_bias, dtype=self.dtype)
        feats = [nn.relu(preact) for preact in preact_feats]
        record_stages(self, feats, preact_feats, x, logits, cam_placement="only")
        return logits, x

    def original_stage_channels(self) -> tuple[int, ...]:
        return (128, 256, 512, 1024)

    def original_bn_before_relu(self) -> tuple[Path, ...]:
        return tuple((f"model.{index}.4",) for index in _MOBILENET_V1_FEATURE_BLOCKS)


_TORCHVISION_BASIC = functools.partial(BasicBlock, shortcut_name="downsample")
_TORCHVISION_BOTTLENECK = functools.partial(Bottleneck, shortcut_name="downsample")

MODELS: dict[str, Callable[..., nn.Module]] = {
    "imagenet_resnet18": functools.partial(
        ImageNetResNet, block=_TORCHVISION_BASIC, num_blocks=(2, 2, 2, 2)
    ),
    "imagenet_resnet34": functools.partial(
        ImageNetResNet, block=_TORCHVISION_BASIC, num_blocks=(3, 4, 6, 3)
    ),
    "imagenet_resnet50": functools.partial(
        ImageNetResNet, block=_TORCHVISION_BOTTLENECK, num_blocks=(3, 4, 6, 3)
    ),
    "imagenet_mobilenet_v1": MobileNetV1,
}
