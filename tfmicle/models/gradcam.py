"""Grad-CAM (Selvaraju et al. 2017) on the encoder's last convolutional block.

Both encoders end in global average pooling over the last block's feature map A [B, h,
w, C] (ours: the layer "pool"; keras.applications ResNet50: "avg_pool"), so the logits
are head(mean_hw A). Grad-CAM for class c: alpha_k = mean_hw d logit_c / d A_k,
map = ReLU(sum_k alpha_k A_k), upsampled to the input size and divided by its maximum,
so each heatmap lies in [0, 1] (all zeros when nothing speaks for the class). The
logits are recomputed from A (the same function as the classifier's call), so one
forward pass gives both the prediction and the explanation.

Upsampling: a cell of A is not centred where a plain resize puts it. Strided "same"
convolutions (and the strided 1x1 shortcuts, which start at the first pixel) shift each
cell's receptive field towards the top-left: in the 32 px ResNet-18 the cells of the
4 x 4 map look at pixels ~0, 8, 16, 24 while tf.image.resize paints them at 3.5, 11.5,
19.5, 27.5, half a cell off. So the map is interpolated linearly between the measured
centres of the cells' receptive fields (``receptive_field_centres``: the centroid of
|d cell / d input|), measured once when the model is exported.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmicle.models.classifier import IMAGENET_ENCODER


def feature_map_model(encoder: keras.Model) -> keras.Model:
    """images [B, H, W, 3] in [0, 1] -> the last conv block's output [B, h, w, C]: the
    tensor the encoder's global average pooling reduces to its features."""
    if encoder.name == IMAGENET_ENCODER:
        pre = encoder.get_layer("imagenet_preprocess")
        base = next(layer for layer in encoder.layers if isinstance(layer, keras.Model))
        inner = keras.Model(base.inputs, base.get_layer("avg_pool").input)
        x = keras.Input((None, None, 3), name="images")
        return keras.Model(x, inner(pre(x)), name="feature_map")
    return keras.Model(encoder.inputs, encoder.get_layer("pool").input, name="feature_map")


def receptive_field_centres(feature_map: keras.Model, size: int, seed: int = 0) -> np.ndarray:
    """[h] the effective centre (in input pixels, the same along rows and columns) of
    each cell of the feature map of a size x size input: the centroid of |d A[j, j] /
    d input| over a few seeded random images. Falls back to the uniform grid when a
    gradient vanishes."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.uniform(0.25, 0.75, (4, size, size, 3)), tf.float32)
    h = int(feature_map(x[:1], training=False).shape[1])
    uniform = (np.arange(h) + 0.5) * size / h - 0.5
    pos = np.arange(size, dtype=np.float64)
    centres = []
    for j in range(h):
        with tf.GradientTape() as tape:
            tape.watch(x)
            a = tf.cast(feature_map(x, training=False), tf.float32)
            s = tf.reduce_sum(tf.abs(a[:, j, j, :]))
        g = np.abs(tape.gradient(s, x).numpy()).sum(axis=(0, 3))  # [S, S]
        rows, cols = g.sum(axis=1), g.sum(axis=0)
        if rows.sum() <= 0 or cols.sum() <= 0:
            return uniform
        centres.append(0.5 * ((rows * pos).sum() / rows.sum() + (cols * pos).sum() / cols.sum()))
    c = np.asarray(centres)
    return c if h == 1 or np.all(np.diff(c) > 0) else uniform


def upsampling_matrix(centres: np.ndarray, size: int) -> np.ndarray:
    """[size, h] linear interpolation from cells at `centres` to pixels 0..size-1
    (constant beyond the first and last centre)."""
    h = len(centres)
    pos = np.arange(size, dtype=np.float64)
    if h == 1:
        return np.ones((size, 1))
    return np.stack([np.interp(pos, centres, np.eye(h)[k]) for k in range(h)], axis=1)


def grad_cam(feature_map: keras.Model, head, pixels: tf.Tensor,
             classes: tf.Tensor | None = None, upsample: np.ndarray | None = None
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """pixels [B, S, S, 3] float32; classes [B] int32 (-1 or None: the top class);
    head: pooled features [B, C] -> logits (the classifier's logits_of: projection layers
    and head); upsample: upsampling_matrix [S, h] (None: bilinear resize) -> (logits [B, K] float32,
    heatmap [B, S, S] float32 in [0, 1], explained class [B])."""
    maps = tf.cast(feature_map(pixels, training=False), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(maps)
        logits = tf.cast(head(tf.reduce_mean(maps, axis=[1, 2])), tf.float32)
        top = tf.argmax(logits, axis=-1, output_type=tf.int32)
        cls = top if classes is None else tf.where(classes < 0, top, tf.cast(classes, tf.int32))
        score = tf.reduce_sum(tf.gather(logits, cls, axis=1, batch_dims=1))
    grads = tape.gradient(score, maps)                       # [B, h, w, C]
    alpha = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)  # [B, 1, 1, C]
    cam = tf.nn.relu(tf.reduce_sum(alpha * maps, axis=-1))  # [B, h, w]
    if upsample is not None:
        m = tf.constant(upsample, tf.float32)
        cam = tf.einsum("yh,bhw,xw->byx", m, cam, m)
    else:
        cam = tf.image.resize(cam[..., None], tf.shape(pixels)[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
    heat = tf.math.divide_no_nan(cam, peak)
    return logits, tf.clip_by_value(heat, 0.0, 1.0), cls


__all__ = ["feature_map_model", "receptive_field_centres", "upsampling_matrix", "grad_cam"]
