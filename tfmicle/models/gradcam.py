"""Grad-CAM (Selvaraju et al. 2017) on the encoder's last convolutional block.

Both encoders end in global average pooling over the last block's feature map A [B, h,
w, C] (ours: the layer "pool"; keras.applications ResNet50: "avg_pool"), so the logits
are head(mean_hw A). Grad-CAM for class c: alpha_k = mean_hw d logit_c / d A_k,
map = ReLU(sum_k alpha_k A_k), upsampled (bilinear) to the input size and divided by its
maximum, so each heatmap lies in [0, 1] (all zeros when nothing speaks for the class).
The logits are recomputed from A (the same function as the classifier's call), so one
forward pass gives both the prediction and the explanation.
"""
from __future__ import annotations

import keras
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


def grad_cam(feature_map: keras.Model, head: keras.layers.Layer, pixels: tf.Tensor,
             classes: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """pixels [B, S, S, 3] float32; classes [B] int32 (-1 or None: the top class) ->
    (logits [B, K] float32, heatmap [B, S, S] float32 in [0, 1], explained class [B])."""
    maps = tf.cast(feature_map(pixels, training=False), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(maps)
        logits = tf.cast(head(tf.reduce_mean(maps, axis=[1, 2])), tf.float32)
        top = tf.argmax(logits, axis=-1, output_type=tf.int32)
        cls = top if classes is None else tf.where(classes < 0, top, tf.cast(classes, tf.int32))
        score = tf.reduce_sum(tf.gather(logits, cls, axis=1, batch_dims=1))
    grads = tape.gradient(score, maps)                       # [B, h, w, C]
    alpha = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)  # [B, 1, 1, C]
    cam = tf.nn.relu(tf.reduce_sum(alpha * maps, axis=-1, keepdims=True))  # [B, h, w, 1]
    size = tf.shape(pixels)[1:3]
    cam = tf.image.resize(cam, size, method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
    heat = tf.math.divide_no_nan(cam, peak)
    return logits, tf.clip_by_value(heat, 0.0, 1.0), cls


__all__ = ["feature_map_model", "grad_cam"]
