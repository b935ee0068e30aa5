"""The one augmentation module: decoding, eval preprocessing and the SimCLR / CXR /
fine-tuning augmentations, all tf ops (run inside tf.data and inside exported graphs).

Random ops are stateless and take a seed [2] int, so a pipeline is reproducible from
its seed while every element and every epoch still gets fresh randomness.
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
}


def preset(name: str, **overrides) -> AugmentConfig:
    """A preset with some fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r} (one of {sorted(PRESETS)})")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF scalar string -> float32 [H, W, 3] in [0, 1]."""
    img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    return tf.image.convert_image_dtype(img, tf.float32)


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


def _uniform(seed, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform([], seed, lo, hi)


def _random_resized_crop(image, seed, size, min_area):
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bbox, seed=seed, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(min_area, 1.0),
        max_attempts=100, use_image_if_no_bounding_boxes=True)
    oy, ox, _ = tf.unstack(begin)
    th, tw, _ = tf.unstack(crop_size)
    crop = tf.image.crop_to_bounding_box(image, oy, ox, th, tw)
    return tf.image.resize(crop, [size, size], method="bicubic")


def _to_gray(image):
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def _color_jitter(image, seed, s):
    """Brightness (multiplicative), contrast, saturation, hue in a random order (SimCLR)."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    b, c, sat, hue = 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s

    def brightness(x):
        return x * _uniform(seeds[0], max(0.0, 1 - b), 1 + b)

    def contrast(x):
        return tf.image.adjust_contrast(x, _uniform(seeds[1], max(0.0, 1 - c), 1 + c))

    def saturation(x):
        return tf.image.adjust_saturation(x, _uniform(seeds[2], max(0.0, 1 - sat), 1 + sat))

    def hue_fn(x):
        return tf.image.adjust_hue(x, _uniform(seeds[3], -hue, hue))

    order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
    fns = [brightness, contrast, saturation, hue_fn]
    for i in range(4):
        image = tf.switch_case(order[i], [lambda f=f: f(image) for f in fns])
        image = tf.clip_by_value(image, 0.0, 1.0)
    return image


def _gaussian_blur(image, seed, size):
    """SimCLR blur: sigma ~ U(0.1, 2.0), kernel side = size // 10 (odd), separable."""
    radius = max(size // 20, 1)
    sigma = _uniform(seed, 0.1, 2.0)
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    k = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
    k = k / tf.reduce_sum(k)
    kh = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    kv = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    x4 = image[tf.newaxis]
    x4 = tf.pad(x4, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x4 = tf.nn.depthwise_conv2d(x4, kh, [1, 1, 1, 1], "VALID")
    x4 = tf.nn.depthwise_conv2d(x4, kv, [1, 1, 1, 1], "VALID")
    return x4[0]


def _rotate(image, seed, max_degrees):
    """Rotation about the centre by U(-d, d) degrees, reflected borders."""
    angle = _uniform(seed, -max_degrees, max_degrees) * math.pi / 180.0
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=shape[:2], fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    return out[0]


def augment(image: tf.Tensor, seed: tf.Tensor, size: int, cfg: AugmentConfig) -> tf.Tensor:
    """One random view: float [H, W, 3] in [0, 1] -> [size, size, 3] in [0, 1].

    seed: int32/int64 [2] (stateless). Order as SimCLR: crop + resize, flip, colour jitter
    (p), grayscale (p), then rotation and blur (p).
    """
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8)
    if cfg.crop:
        image = _random_resized_crop(image, s[0], size, cfg.crop_min_area)
    else:
        image = center_crop_resize(image, size)
    if cfg.flip:
        image = tf.image.stateless_random_flip_left_right(image, s[1])
    if cfg.color_p > 0:
        image = tf.cond(_uniform(s[2]) < cfg.color_p,
                        lambda: _color_jitter(image, s[3], cfg.color_strength), lambda: image)
    if cfg.grayscale_p > 0:
        image = tf.cond(_uniform(s[4]) < cfg.grayscale_p, lambda: _to_gray(image), lambda: image)
    if cfg.rotation_degrees > 0:
        image = _rotate(image, s[5], cfg.rotation_degrees)
    if cfg.blur_p > 0:
        image = tf.cond(_uniform(s[6]) < cfg.blur_p,
                        lambda: _gaussian_blur(image, s[7], size), lambda: image)
    image = tf.clip_by_value(image, 0.0, 1.0)
    image.set_shape([size, size, 3])
    return image
