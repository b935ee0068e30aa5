"""ResNet v1 as in SimCLRv2 (Chen et al. 2020): depths 18-200, width multiplier,
optional selective kernels, BN eps 1e-5 / momentum 0.9, zero-initialised last BN of
each block, and a small-image stem (3x3 conv, no max-pool) for images <= 32 px.

Layer names carry the stage ("stem_...", "block_group{1..4}_...") so fine-tuning can
freeze by stage, and every batch norm's name contains "batch_normalization" so LARS
can exclude it by variable path.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops

BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
          152: [3, 8, 36, 3], 200: [3, 24, 36, 3]}
STAGES = ("stem", "block_group1", "block_group2", "block_group3", "block_group4")
SMALL_IMAGE_MAX = 32  # SimCLR's CIFAR-10 rule: images this small get the 3x3 stem


def small_stem(image_size: int) -> bool:
    """True when images of this size get the small-image stem (3x3 conv, no max-pool)."""
    return image_size <= SMALL_IMAGE_MAX


@dataclass
class ResNetSpec:
    """Encoder hyper-parameters. dtype: a Keras dtype policy name ("float32",
    "mixed_bfloat16")."""
    depth: int = 50
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    image_size: int = 224
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    global_bn: bool = True
    dtype: str = "float32"


class _Builder:
    def __init__(self, spec: ResNetSpec):
        self.s = spec

    def filters(self, base: int) -> int:
        return max(1, int(round(base * self.s.width_multiplier)))

    def conv(self, x, filters, kernel, strides, name):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                             kernel_initializer="he_normal", dtype=self.s.dtype, name=name)(x)

    def bn(self, x, name, relu=True, zero_init=False, center=True):
        x = layers.BatchNormalization(
            momentum=self.s.bn_momentum, epsilon=self.s.bn_epsilon, center=center,
            gamma_initializer="zeros" if zero_init else "ones",
            synchronized=self.s.global_bn, dtype=self.s.dtype, name=name)(x)
        return layers.ReLU(dtype=self.s.dtype, name=name + "_relu")(x) if relu else x

    def conv_bn(self, x, filters, kernel, strides, name, relu=True, zero_init=False):
        """A conv then BN (+ ReLU); a 3x3 conv with ReLU becomes a selective-kernel conv
        when sk_ratio > 0 (as SimCLRv2: zero-init output convs stay plain)."""
        if self.s.sk_ratio > 0 and kernel == 3 and relu and not zero_init:
            return self.sk_conv(x, filters, strides, name)
        x = self.conv(x, filters, kernel, strides, name + "_conv")
        return self.bn(x, name + "_batch_normalization", relu=relu, zero_init=zero_init)

    def sk_conv(self, x, filters, strides, name):
        """Selective kernel (SKNet as in SimCLRv2): two 3x3 branches (one conv of 2x
        filters split in two), attention over branches from the pooled sum."""
        x = self.conv(x, 2 * filters, 3, strides, name + "_sk_conv")
        x = self.bn(x, name + "_sk_batch_normalization")
        a, b = ops.split(x, 2, axis=-1)
        pooled = ops.mean(a + b, axis=(1, 2), keepdims=True)
        hidden = max(int(filters * self.s.sk_ratio), 8)
        z = self.conv(pooled, hidden, 1, 1, name + "_sk_reduce")
        z = self.bn(z, name + "_sk_reduce_batch_normalization")
        z = self.conv(z, 2 * filters, 1, 1, name + "_sk_expand")
        za, zb = ops.split(z, 2, axis=-1)
        att = ops.softmax(ops.stack([za, zb], axis=0), axis=0)
        return a * att[0] + b * att[1]

    def shortcut(self, x, filters, strides, name):
        if self.s.sk_ratio > 0 and strides > 1:
            # SimCLRv2 with SK uses an average-pool shortcut (ResNet-D).
            x = layers.AveragePooling2D(strides, strides, padding="same", dtype=self.s.dtype,
                                        name=name + "_pool")(x)
            strides = 1
        x = self.conv(x, filters, 1, strides, name + "_conv")
        return self.bn(x, name + "_batch_normalization", relu=False)

    def basic_block(self, x, filters, strides, project, name):
        sc = self.shortcut(x, filters, strides, name + "_proj") if project else x
        y = self.conv_bn(x, filters, 3, strides, name + "_1")
        y = self.conv_bn(y, filters, 3, 1, name + "_2", relu=False, zero_init=True)
        return layers.ReLU(dtype=self.s.dtype, name=name + "_out")(layers.Add(
            dtype=self.s.dtype, name=name + "_add")([y, sc]))

    def bottleneck_block(self, x, filters, strides, project, name):
        sc = self.shortcut(x, 4 * filters, strides, name + "_proj") if project else x
        y = self.conv_bn(x, filters, 1, 1, name + "_1")
        y = self.conv_bn(y, filters, 3, strides, name + "_2")
        y = self.conv_bn(y, 4 * filters, 1, 1, name + "_3", relu=False, zero_init=True)
        return layers.ReLU(dtype=self.s.dtype, name=name + "_out")(layers.Add(
            dtype=self.s.dtype, name=name + "_add")([y, sc]))

    def build(self) -> keras.Model:
        s = self.s
        if s.depth not in BLOCKS:
            raise ValueError(f"unsupported ResNet depth {s.depth} (one of {sorted(BLOCKS)})")
        inputs = keras.Input((None, None, 3), name="images")
        x = inputs
        if small_stem(s.image_size):
            x = self.conv_bn(x, self.filters(64), 3, 1, "stem")
        else:
            if s.sk_ratio > 0:  # SimCLRv2's three-conv stem with SK
                x = self.conv_bn(x, self.filters(64) // 2 or 1, 3, 2, "stem_a")
                x = self.conv_bn(x, self.filters(64) // 2 or 1, 3, 1, "stem_b")
                x = self.conv_bn(x, self.filters(64), 3, 1, "stem_c")
            else:
                x = self.conv_bn(x, self.filters(64), 7, 2, "stem")
            x = layers.MaxPooling2D(3, 2, padding="same", dtype=s.dtype, name="stem_pool")(x)
        bottleneck = s.depth >= 50
        block = self.bottleneck_block if bottleneck else self.basic_block
        in_ch = self.filters(64)
        for g, (n, base) in enumerate(zip(BLOCKS[s.depth], (64, 128, 256, 512)), start=1):
            f = self.filters(base)
            out_ch = 4 * f if bottleneck else f
            for i in range(n):
                strides = 2 if (i == 0 and g > 1) else 1
                project = i == 0 and (strides > 1 or in_ch != out_ch)
                x = block(x, f, strides, project, f"block_group{g}_block{i}")
                in_ch = out_ch
        x = layers.GlobalAveragePooling2D(dtype=s.dtype, name="pool")(x)
        x = layers.Activation("linear", dtype="float32", name="features")(x)
        return keras.Model(inputs, x, name="resnet")


def build_resnet(spec: ResNetSpec) -> keras.Model:
    """The encoder: images [B, H, W, 3] in [0, 1] -> features [B, C] float32, where
    C = 512 * width (depth < 50) or 2048 * width (depth >= 50)."""
    return _Builder(spec).build()


def stage_of(layer_name: str) -> int:
    """Index into STAGES of a layer of the encoder (0 = stem, k = block_group k);
    -1 for layers outside the stages (input, pooling)."""
    for i, stage in reversed(list(enumerate(STAGES))):
        if layer_name.startswith(stage):
            return i
    return -1
