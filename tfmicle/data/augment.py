"""The one augmentation module: decoding, eval preprocessing and the SimCLR / CXR /
fine-tuning augmentations, all tf ops (run inside tf.data and inside exported graphs).

Random ops are stateless and take a seed [2] int, so a pipeline is reproducible from
its seed while every element and every epoch still gets fresh randomness. A view is
made in two parts: crop_view per image (images differ in size), then augment_batch on
the whole batch, vectorised with per-example random parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
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


def _uniform(seed, lo=0.0, hi=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


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


def crop_view(image: tf.Tensor, seed: tf.Tensor, size: int, cfg: AugmentConfig) -> tf.Tensor:
    """The per-image part of a view: float [H, W, 3] -> [size, size, 3], a random resized
    crop (area in [crop_min_area, 1], aspect 3/4-4/3) or, with crop off, the eval crop."""
    if cfg.crop:
        out = _random_resized_crop(image, tf.cast(seed, tf.int64), size, cfg.crop_min_area)
    else:
        out = center_crop_resize(image, size)
    out = tf.clip_by_value(out, 0.0, 1.0)
    out.set_shape([size, size, 3])
    return out


# ITU-R 601 luma weights (as tf.image.rgb_to_grayscale) and the RGB <-> YIQ transform
# used for hue rotation.
_LUMA = np.array([0.2989, 0.5870, 0.1140])
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)


def _gray(x):
    """[B, H, W, 3] -> luminance replicated to 3 channels (ITU-R 601, as tf.image)."""
    return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3])


def _per_example(v):
    return v[:, tf.newaxis, tf.newaxis, tf.newaxis]


def _color_affine(x, seed, strength, color_p, grayscale_p):
    """SimCLR's colour distortion as one per-example affine map of RGB, y = A x + c.

    Jitter (with probability color_p): brightness (multiplicative, 0.8 s), contrast
    (0.8 s, about each channel's image mean, as tf.image.adjust_contrast), saturation
    (0.8 s, blend with luma) and hue (0.2 s of the colour circle, a rotation in YIQ's
    chroma plane), in a random order per example; then grayscale with probability
    grayscale_p. Every step is affine in RGB, so the maps compose into one 3x3 matrix
    and offset per example and the image is touched once (clipped once, at the end).
    Returns A [B, 3, 3], c [B, 3].
    """
    f32 = tf.float32
    b = tf.shape(x)[0]
    k = tf.random.experimental.stateless_split(seed, 7)
    eye = tf.eye(3, batch_shape=[b], dtype=f32)
    luma = tf.constant(np.tile(_LUMA, (3, 1)), f32)              # every row = luma weights
    A, c = eye, tf.zeros([b, 3], f32)
    if color_p > 0:
        s = strength
        fb = _uniform(k[0], max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, [b])
        fc = _uniform(k[1], max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, [b])
        fs = _uniform(k[2], max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, [b])
        theta = _uniform(k[3], -0.2 * s, 0.2 * s, [b]) * 2.0 * math.pi
        m = tf.reduce_mean(x, axis=[1, 2])                        # [B, 3] channel means
        per = lambda v: v[:, tf.newaxis, tf.newaxis]  # noqa: E731
        L_bright = per(fb) * eye
        L_sat = per(fs) * eye + per(1.0 - fs) * luma
        cos, sin = tf.cos(theta), tf.sin(theta)
        zero, one = tf.zeros_like(theta), tf.ones_like(theta)
        rot = tf.reshape(tf.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1),
                         [b, 3, 3])
        L_hue = tf.constant(_YIQ_INV, f32) @ rot @ tf.constant(_YIQ, f32)
        order = tf.argsort(tf.random.stateless_uniform([b, 4], k[4]), axis=1)
        for slot in range(4):
            cand_A = tf.stack([L_bright @ A, per(fc) * A, L_sat @ A, L_hue @ A], axis=1)
            Am = tf.linalg.matvec(A, m)
            cand_c = tf.stack([tf.linalg.matvec(L_bright, c),
                               c + (1.0 - fc)[:, tf.newaxis] * Am,
                               tf.linalg.matvec(L_sat, c), tf.linalg.matvec(L_hue, c)], axis=1)
            A = tf.gather(cand_A, order[:, slot], batch_dims=1)
            c = tf.gather(cand_c, order[:, slot], batch_dims=1)
        on = _uniform(k[5], shape=[b]) < color_p
        A = tf.where(on[:, tf.newaxis, tf.newaxis], A, eye)
        c = tf.where(on[:, tf.newaxis], c, 0.0)
    if grayscale_p > 0:
        g = (_uniform(k[6], shape=[b]) < grayscale_p)
        A = tf.where(g[:, tf.newaxis, tf.newaxis], luma @ A, A)
        c = tf.where(g[:, tf.newaxis], tf.linalg.matvec(luma, c), c)
    return A, c


def _gaussian_blur_batch(x, seed, size):
    """SimCLR blur with a per-example sigma ~ U(0.1, 2.0); kernel side = size // 10
    (odd), separable, reflected borders. The batch is folded into channels so one
    depthwise convolution applies every example's own kernel."""
    radius = max(size // 20, 1)
    b = tf.shape(x)[0]
    sigma = _uniform(seed, 0.1, 2.0, [b])
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
    """The per-batch part of the views, vectorised (tf.data's per-element op overhead
    dominates for small images): x [B, S, S, 3] in [0, 1] -> same shape. Each example
    draws its own flip, jitter, grayscale, rotation and blur. Order as SimCLR: flip,
    colour jitter (p), grayscale (p), rotation, blur (p)."""
    b = tf.shape(x)[0]
    size = x.shape[1] or 0
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8)
    if cfg.flip:
        x = tf.where(_per_example(_uniform(s[0], shape=[b]) < 0.5), tf.reverse(x, [2]), x)
    if cfg.color_p > 0 or cfg.grayscale_p > 0:
        A, c = _color_affine(x, s[1], cfg.color_strength, cfg.color_p, cfg.grayscale_p)
        x = tf.einsum("bij,bhwj->bhwi", A, x) + c[:, tf.newaxis, tf.newaxis, :]
        x = tf.clip_by_value(x, 0.0, 1.0)
    if cfg.rotation_degrees > 0:
        x = _rotate_batch(x, s[4], cfg.rotation_degrees)
    if cfg.blur_p > 0:
        # Blur only the chosen examples (about half): gather, blur, scatter back.
        idx = tf.where(_uniform(s[5], shape=[b]) < cfg.blur_p)
        x = tf.cond(tf.size(idx) > 0, lambda: tf.tensor_scatter_nd_update(
            x, idx, _gaussian_blur_batch(tf.gather_nd(x, idx), s[6], size or 32)),
            lambda: x)
    return tf.clip_by_value(x, 0.0, 1.0)


def augment(image: tf.Tensor, seed: tf.Tensor, size: int, cfg: AugmentConfig) -> tf.Tensor:
    """One random view of one image: float [H, W, 3] in [0, 1] -> [size, size, 3].
    seed: int [2] (stateless). The same ops as the pipelines (crop_view then
    augment_batch), for a single image."""
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    out = augment_batch(crop_view(image, s[0], size, cfg)[tf.newaxis], s[1], cfg)[0]
    out.set_shape([size, size, 3])
    return out
