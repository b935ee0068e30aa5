"""The one augmentation module: decoding, eval preprocessing and the SimCLR / CXR /
fine-tuning augmentations, all tf ops (run inside tf.data and inside exported graphs).

Random ops are stateless and take a seed [2] int, so a pipeline is reproducible from
its seed while every element and every epoch still gets fresh randomness. A view is
made in three parts: decode_view (the crop; a JPEG decoded only in its window) and
augment_view (flip, colour, grayscale) per image in the pipelines' parallel map, then
augment_batch (rotation, blur) on the whole batch, vectorised with per-example random
parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import tensorflow as tf

CROP_PROPORTION = 0.875  # SimCLR's eval centre crop


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strong. Presets: simclr, cxr, finetune, none."""
    crop: bool = True
    crop_min_area: float = 0.08
    flip: bool = True
    color_p: float = 0.8           # probability of colour jitter
    color_strength: float = 1.0    # s: brightness/contrast/saturation 0.8 s, hue 0.2 s
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    rotation_degrees: float = 0.0  # uniform in [-d, d]


PRESETS = {
    "simclr": AugmentConfig(),
    # CheXpert recipe of the paper: crop, jitter 0.5, rotation up to 45 degrees, flip, no blur.
    "cxr": AugmentConfig(color_strength=0.5, grayscale_p=0.0, blur_p=0.0, rotation_degrees=45.0),
    # Fine-tuning: crop + resize and flip (SimCLR's fine-tuning default); others switchable.
    "finetune": AugmentConfig(crop_min_area=0.08, color_p=0.0, grayscale_p=0.0, blur_p=0.0),
    "none": AugmentConfig(crop=False, flip=False, color_p=0.0, grayscale_p=0.0, blur_p=0.0),
    # Dermatology pretraining (MICLe / SimCLR): SimCLR's crop and flip without colour
    # jitter or grayscale: colour is a same-lesion cue that they erase. Chosen on
    # validation lesions carved from PH2's pretraining lesions at 32 px, where SimCLR also
    # drops blur (experiments/choose_derm_settings.py; the search is in
    # experiments/README.md). At 224 px set blur_p 0.5 (SimCLR), as configs/derm_*.yaml do;
    # on real photos (HAM10000 at 64 px) weak colour jitter (p 0.8, strength 0.2) scored
    # better on validation lesions, and configs/derm_*.yaml add it.
    "derm": AugmentConfig(color_p=0.0, grayscale_p=0.0, blur_p=0.0),
}


def preset(name: str, **overrides) -> AugmentConfig:
    """A preset with some fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r} (one of {sorted(PRESETS)})")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF scalar string -> float32 [H, W, 3] in [0, 1]."""
    return tf.image.convert_image_dtype(_decode_uint8(encoded), tf.float32)


def center_crop_resize(image: tf.Tensor, size: int,
                       crop_proportion: float = CROP_PROPORTION) -> tf.Tensor:
    """SimCLR's eval preprocessing: the centre crop of the same aspect as the output with
    crop_proportion of the shorter side, resized (bicubic) to [size, size, 3]."""
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    side = crop_proportion * tf.minimum(h, w)
    ch = tf.cast(tf.round(side), tf.int32)
    cw = ch
    oy = (shape[0] - ch + 1) // 2
    ox = (shape[1] - cw + 1) // 2
    crop = tf.image.crop_to_bounding_box(image, oy, ox, ch, cw)
    out = tf.image.resize(crop, [size, size], method="bicubic")
    return tf.clip_by_value(out, 0.0, 1.0)


def preprocess_eval(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded image -> [size, size, 3] float32: what evaluation, scoring and the
    exported SavedModel all run."""
    return center_crop_resize(decode_image(encoded), size)


def _uniform(seed, lo=0.0, hi=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


def _crop_window(shape: tf.Tensor, seed: tf.Tensor, min_area: float):
    """SimCLR's random crop window of an image of shape [H, W, C]: area in [min_area, 1]
    of the image, aspect 3/4-4/3. Returns (offset_y, offset_x, height, width) int32."""
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bbox, seed=tf.cast(seed, tf.int64), min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(min_area, 1.0),
        max_attempts=100, use_image_if_no_bounding_boxes=True)
    oy, ox, _ = tf.unstack(begin)
    th, tw, _ = tf.unstack(crop_size)
    return oy, ox, th, tw


def _resized(crop: tf.Tensor, size: int) -> tf.Tensor:
    """A crop (uint8 or float in [0, 1]) -> float32 [size, size, 3] (bicubic, clipped)."""
    out = tf.image.resize(tf.image.convert_image_dtype(crop, tf.float32), [size, size],
                          method="bicubic")
    out = tf.clip_by_value(out, 0.0, 1.0)
    out.set_shape([size, size, 3])
    return out


def crop_view(image: tf.Tensor, seed: tf.Tensor, size: int, cfg: AugmentConfig) -> tf.Tensor:
    """The per-image part of a view: [H, W, 3] (float in [0, 1] or uint8) -> float32
    [size, size, 3], a random resized crop (area in [crop_min_area, 1], aspect 3/4-4/3)
    or, with crop off, the eval crop."""
    if cfg.crop:
        oy, ox, th, tw = _crop_window(tf.shape(image), seed, cfg.crop_min_area)
        return _resized(tf.image.crop_to_bounding_box(image, oy, ox, th, tw), size)
    out = center_crop_resize(tf.image.convert_image_dtype(image, tf.float32), size)
    out.set_shape([size, size, 3])
    return out


def _decode_uint8(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded image -> uint8 [H, W, 3] (decode_image before its float conversion)."""
    img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


def is_jpeg(encoded: tf.Tensor) -> tf.Tensor:
    """True for JPEG bytes (the SOI marker and the next marker's 0xFF)."""
    return tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")


def decode_view(encoded: tf.Tensor, seed: tf.Tensor, size: int,
                cfg: AugmentConfig) -> tf.Tensor:
    """crop_view(decode_image(encoded), seed, size, cfg), cheaper: a JPEG is decoded only
    in its crop window (tf.io.decode_and_crop_jpeg, as SimCLR reads ImageNet), and
    pixels become float only after the crop. The same window and the same pixels, except
    that libjpeg upsamples chroma without the neighbours beyond the window's last column
    or row (a few edge pixels of 4:2:0 JPEGs differ slightly)."""
    if not cfg.crop:
        return crop_view(_decode_uint8(encoded), seed, size, cfg)

    def jpeg():
        hw = tf.io.extract_jpeg_shape(encoded)[:2]
        oy, ox, th, tw = _crop_window(tf.concat([hw, [3]], 0), seed, cfg.crop_min_area)
        return _resized(tf.io.decode_and_crop_jpeg(encoded, tf.stack([oy, ox, th, tw]),
                                                   channels=3), size)

    return tf.cond(is_jpeg(encoded), jpeg,
                   lambda: crop_view(_decode_uint8(encoded), seed, size, cfg))


def decode_views(encoded: tf.Tensor, seeds: tf.Tensor, size: int,
                 cfg: AugmentConfig) -> list[tf.Tensor]:
    """Several views of one image (seeds [k, 2]): decoded once, in full (k crop windows
    cover more of a JPEG than one decode), cropped in uint8, then made float."""
    img = _decode_uint8(encoded)
    return [crop_view(img, seeds[i], size, cfg) for i in range(seeds.shape[0])]


BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3   # colour-jitter op ids


def _jitter_op(x: tf.Tensor, op: int, factor: tf.Tensor) -> tf.Tensor:
    """One jitter op on one image [H, W, 3] (scalar factor), clipped to [0, 1] as SimCLR
    clips after every op: brightness x * f (SimCLRv2's random_brightness), then
    tf.image's fused adjust_contrast / adjust_saturation / adjust_hue."""
    if op == BRIGHTNESS:
        out = x * factor
    elif op == CONTRAST:
        out = tf.image.adjust_contrast(x, factor)
    elif op == SATURATION:
        out = tf.image.adjust_saturation(x, factor)
    else:
        out = tf.image.adjust_hue(x, factor)
    return tf.clip_by_value(out, 0.0, 1.0)


def color_jitter(x: tf.Tensor, factors: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """SimCLR's colour jitter of one image with given parameters.

    x [H, W, 3] in [0, 1]; factors [4]: brightness, contrast and saturation factors and
    the hue shift (fraction of the colour circle); order [4] int: a permutation of the op
    ids (BRIGHTNESS, CONTRAST, SATURATION, HUE). The ops run in that order with a clip to
    [0, 1] after each, as SimCLR's color_jitter_rand (checked against a tf.image
    reference in tests/test_pipeline.py). Per image, in the parallel map of the
    pipelines: tf.image's fused kernels at 224 px cost a fraction of a batched HSV
    round trip."""
    def slot(x, i):
        return tf.switch_case(tf.cast(order[i], tf.int32),
                              [lambda k=k: _jitter_op(x, k, factors[k]) for k in range(4)])
    for i in range(4):
        x = slot(x, i)
        x.set_shape([None, None, 3])
    return x


def sample_jitter(seed: tf.Tensor, batch: int, strength: float) -> tuple[tf.Tensor, tf.Tensor]:
    """SimCLR's random jitter parameters for colour strength s: brightness factor in
    [max(0, 1 - 0.8 s), 1 + 0.8 s], contrast and saturation in [1 - 0.8 s, 1 + 0.8 s],
    hue shift in [-0.2 s, 0.2 s], and a uniformly random order. Returns (factors [B, 4],
    order [B, 4])."""
    s = strength
    lo = tf.constant([max(0.0, 1 - 0.8 * s), 1 - 0.8 * s, 1 - 0.8 * s, -0.2 * s])
    hi = tf.constant([1 + 0.8 * s, 1 + 0.8 * s, 1 + 0.8 * s, 0.2 * s])
    # One draw for all eight numbers: per-view op overhead matters at tf.data rates.
    u = tf.random.stateless_uniform([batch, 8], tf.cast(seed, tf.int64))
    return lo + (hi - lo) * u[:, :4], tf.argsort(u[:, 4:], axis=1)


def augment_view(x: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """The per-view part of the augmentation after the crop, in the pipelines' parallel
    map: x [S, S, 3] in [0, 1] -> same shape. Flip (p 0.5), colour jitter (p color_p,
    SimCLR's ranges for color_strength), grayscale (p grayscale_p), in SimCLR's order;
    an op that is not drawn costs nothing (tf.cond, as SimCLR's random_apply). Per view
    rather than per batch: each core works on its own views."""
    k = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    u = tf.random.stateless_uniform([3], k[0])          # flip, jitter, grayscale draws
    if cfg.flip:
        x = tf.cond(u[0] < 0.5, lambda: tf.reverse(x, [1]), lambda: x)
    if cfg.color_p > 0:
        factors, order = sample_jitter(k[1], 1, cfg.color_strength)
        x = tf.cond(u[1] < cfg.color_p, lambda: color_jitter(x, factors[0], order[0]),
                    lambda: x)
    if cfg.grayscale_p > 0:
        x = tf.cond(u[2] < cfg.grayscale_p,
                    lambda: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), lambda: x)
    return x


def gaussian_blur_batch(x: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """SimCLR's blur with a per-example sigma [B]: x [B, H, W, 3], a separable Gaussian
    over 2 radius + 1 taps (normalised), reflected borders. The batch is folded into
    channels so one depthwise convolution applies every example's own kernel (faster
    on CPU than one small convolution per view)."""
    b = tf.shape(x)[0]
    t = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    k = tf.exp(-tf.square(t)[tf.newaxis] / (2.0 * tf.square(sigma)[:, tf.newaxis]))
    k = k / tf.reduce_sum(k, axis=1, keepdims=True)            # [B, K]
    k = tf.reshape(tf.repeat(k, 3, axis=0), [b * 3, -1])        # [B*3, K]
    kh = tf.transpose(k)[tf.newaxis, :, :, tf.newaxis]          # [1, K, B*3, 1]
    kv = tf.transpose(k)[:, tf.newaxis, :, tf.newaxis]          # [K, 1, B*3, 1]
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, w, b * 3])
    folded = tf.pad(folded, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    folded = tf.nn.depthwise_conv2d(folded, kh, [1, 1, 1, 1], "VALID")
    folded = tf.nn.depthwise_conv2d(folded, kv, [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(folded, [h, w, b, 3]), [2, 0, 1, 3])


def _rotate_batch(x, seed, max_degrees):
    """Rotation of each example about its centre by U(-d, d) degrees, reflected borders."""
    b = tf.shape(x)[0]
    angle = _uniform(seed, -max_degrees, max_degrees, [b]) * math.pi / 180.0
    h = tf.cast(tf.shape(x)[1], tf.float32)
    w = tf.cast(tf.shape(x)[2], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    zeros = tf.zeros_like(angle)
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                           sin, cos, cy - sin * cx - cos * cy, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")


def augment_batch(x: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """The per-batch part of the views, vectorised: x [B, S, S, 3] in [0, 1] -> same
    shape. Each example draws its own rotation (the cxr preset) and blur (SimCLR also
    blurs after batching: sigma ~ U(0.1, 2), kernel side a tenth of the image side,
    p blur_p), then everything is clipped to [0, 1]."""
    b = tf.shape(x)[0]
    size = x.shape[1] or 0
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8)
    if cfg.rotation_degrees > 0:
        x = _rotate_batch(x, s[4], cfg.rotation_degrees)
    if cfg.blur_p > 0:
        # Blur only the chosen examples (about half): gather, blur, scatter back.
        idx = tf.where(_uniform(s[5], shape=[b]) < cfg.blur_p)
        radius = max((size or 32) // 20, 1)
        x = tf.cond(tf.size(idx) > 0, lambda: tf.tensor_scatter_nd_update(
            x, idx, gaussian_blur_batch(tf.gather_nd(x, idx),
                                        _uniform(s[6], 0.1, 2.0, [tf.size(idx)]), radius)),
            lambda: x)
    return tf.clip_by_value(x, 0.0, 1.0)


def augment(image: tf.Tensor, seed: tf.Tensor, size: int, cfg: AugmentConfig) -> tf.Tensor:
    """One random view of one image: float [H, W, 3] in [0, 1] -> [size, size, 3].
    seed: int [2] (stateless). The same ops as the pipelines (crop_view, augment_view,
    then augment_batch), for a single image."""
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    view = augment_view(crop_view(image, s[0], size, cfg), s[2], cfg)
    out = augment_batch(view[tf.newaxis], s[1], cfg)[0]
    out.set_shape([size, size, 3])
    return out
