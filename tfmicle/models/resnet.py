"""ResNet v1 as in SimCLRv2 (Chen et al. 2020): depths 18-200, width multiplier,
optional selective kernels, BN eps 1e-5 / momentum 0.9, zero-initialised last BN of
each block, and a small-image stem (3x3 conv, no max-pool) for images <= 32 px.

Exact to SimCLRv2's TF1 resnet.py for depths >= 50 (checked against the official
code's outputs, tests/test_import_checkpoint.py), so its published checkpoints import
(tfmicle.models.simclr_tf1): strided convs pad explicitly ((k-1)//2 before) and
convolve VALID; with SK (sk_ratio > 0) the stem is three 3x3 convs (32w, 32w, 64w),
SK replaces only the bottleneck's 3x3 conv (hidden width max(f * sk_ratio, 32)) and
every projection shortcut averages 2x2 first (ResNet-D), at stride 1 in block group 1.
Depths 18 / 34 keep an identity shortcut in block group 1 (as torchvision; SimCLR's
TF1 code projects there), since no SimCLR checkpoint of them exists.

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


SK_MIN_DIM = 32  # SimCLRv2 resnet.sk_conv2d: the SK hidden width is max(f * sk_ratio, 32)


@keras.saving.register_keras_serializable(package="tfmicle")
class FixedPaddingConv2D(layers.Conv2D):
    """SimCLR's conv2d_fixed_padding: a strided conv pads (k-1)//2 before and the rest
    after, in H and W, whatever the input size, then convolves VALID; a stride-1 conv is
    SAME. (TF's own SAME pads asymmetrically by input size: 7x7/2 on 224 px would pad
    2 before / 3 after, and shift the whole network by a pixel.) One layer, not
    ZeroPadding2D + Conv2D, so checkpoints keep their layer indices."""

    def __init__(self, filters, kernel_size, strides=1, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(filters, kernel_size, strides=strides,
                         padding="same" if _int(strides) == 1 else "valid", **kwargs)
        k = _int(self.kernel_size)
        self._pads = (k - 1) // 2, k - 1 - (k - 1) // 2
        self._explicit = _int(strides) > 1 and k > 1

    def call(self, inputs):
        if self._explicit:
            beg, end = self._pads
            inputs = ops.pad(inputs, [[0, 0], [beg, end], [beg, end], [0, 0]])
        return super().call(inputs)

    def compute_output_shape(self, input_shape):
        if self._explicit:
            grow = sum(self._pads)
            input_shape = tuple(d if d is None or i in (0, 3) else d + grow
                                for i, d in enumerate(input_shape))
        return super().compute_output_shape(input_shape)


def _int(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


class _Builder:
    """Builds the encoder layer by layer and records its convolutions and batch norms
    in creation order (`convs`, `bns`): the order of SimCLR's TF1 graph, whose
    tf.layers names (conv2d, conv2d_1, ...; batch_normalization, ...) are counters in
    that order (tfmicle.models.simclr_tf1 maps them)."""

    def __init__(self, spec: ResNetSpec):
        self.s = spec
        self.convs: list[str] = []
        self.bns: list[str] = []

    def filters(self, base: int) -> int:
        return max(1, int(round(base * self.s.width_multiplier)))

    def conv(self, x, filters, kernel, strides, name):
        self.convs.append(name)
        return FixedPaddingConv2D(filters, kernel, strides=strides, use_bias=False,
                                  kernel_initializer="he_normal", dtype=self.s.dtype,
                                  name=name)(x)

    def bn(self, x, name, relu=True, zero_init=False, center=True):
        self.bns.append(name)
        x = layers.BatchNormalization(
            momentum=self.s.bn_momentum, epsilon=self.s.bn_epsilon, center=center,
            gamma_initializer="zeros" if zero_init else "ones",
            synchronized=self.s.global_bn, dtype=self.s.dtype, name=name)(x)
        return layers.ReLU(dtype=self.s.dtype, name=name + "_relu")(x) if relu else x

    def conv_bn(self, x, filters, kernel, strides, name, relu=True, zero_init=False):
        x = self.conv(x, filters, kernel, strides, name + "_conv")
        return self.bn(x, name + "_batch_normalization", relu=relu, zero_init=zero_init)

    def sk_conv(self, x, filters, strides, name):
        """Selective kernel as SimCLRv2's sk_conv2d: one 3x3 conv of 2f filters + BN +
        ReLU split into two streams; attention over the streams from the spatial mean of
        their sum through 1x1 convs (hidden max(f * sk_ratio, 32), BN + ReLU; then 2f,
        no BN); output = softmax-weighted sum of the streams. [B, H, W, C] -> [B, H', W', f]"""
        x = self.conv(x, 2 * filters, 3, strides, name + "_sk_conv")
        x = self.bn(x, name + "_sk_batch_normalization")
        a, b = ops.split(x, 2, axis=-1)
        pooled = ops.mean(a + b, axis=(1, 2), keepdims=True)
        hidden = max(int(filters * self.s.sk_ratio), SK_MIN_DIM)
        z = self.conv(pooled, hidden, 1, 1, name + "_sk_reduce")
        z = self.bn(z, name + "_sk_reduce_batch_normalization")
        z = self.conv(z, 2 * filters, 1, 1, name + "_sk_expand")
        za, zb = ops.split(z, 2, axis=-1)
        att = ops.softmax(ops.stack([za, zb], axis=0), axis=0)
        return a * att[0] + b * att[1]

    def shortcut(self, x, filters, strides, name):
        """Projection shortcut: 1x1 conv (stride s) + BN; with SK (ResNet-D, as
        SimCLRv2) a 2x2 average first, at stride s: stride 2 pads one row / column after
        and pools VALID, stride 1 pools SAME (padded cells not counted), then a 1x1 conv
        at stride 1."""
        if self.s.sk_ratio > 0:
            if strides > 1:
                x = layers.ZeroPadding2D(((0, 1), (0, 1)), dtype=self.s.dtype,
                                         name=name + "_pad")(x)
            x = layers.AveragePooling2D(2, strides, padding="valid" if strides > 1 else "same",
                                        dtype=self.s.dtype, name=name + "_pool")(x)
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
        if self.s.sk_ratio > 0:  # SimCLRv2: SK replaces the bottleneck's 3x3 conv only
            y = self.sk_conv(y, filters, strides, name + "_2")
        else:
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
            if s.sk_ratio > 0:  # SimCLRv2's three-conv 3x3 stem (ResNet-D), no SK in it
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


def build_resnet_in_order(spec: ResNetSpec) -> tuple[keras.Model, list[str], list[str]]:
    """(encoder, conv layer names, batch-norm layer names), the names in creation order,
    which is SimCLR's TF1 graph-creation order for the same architecture."""
    b = _Builder(spec)
    model = b.build()
    return model, b.convs, b.bns


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
