"""The two task kinds a dataset, a run and an exported model can have, and what each
means for training and for outputs: its loss and its output activation.

- ``multiclass``: one class per image; labels int [N], -1 = unlabeled (masked);
  softmax cross-entropy; softmax probabilities.
- ``multilabel``: any number of classes per image; labels float [N, K] as stored
  (1 positive, 0 negative, -1 uncertain, NaN not mentioned); masked sigmoid
  cross-entropy with a CheXpert uncertainty policy (U-Ones, U-Zeros, U-Ignore);
  per-class sigmoid probabilities.

The names are the ``task`` of dataset.json, finetune.json and the export's
metadata.json. This module imports TensorFlow only inside the functions that need it,
so the names can be used anywhere (scoring, reports). Map: docs/architecture.md.
"""
from __future__ import annotations

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"
TASKS = (MULTICLASS, MULTILABEL)
POLICIES = ("ones", "zeros", "ignore")  # multilabel -1 targets: U-Ones, U-Zeros, U-Ignore


def check_task(task: str) -> str:
    """task, or ValueError naming the two kinds."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (multiclass | multilabel)")
    return task


def uncertainty_targets(targets, policy: str):
    """Multi-label targets as stored (1, 0, -1 uncertain, NaN not mentioned) -> (targets
    in {0, 1}, mask 1.0 where the entry counts). U-Ones: -1 -> 1; U-Zeros: -1 -> 0;
    U-Ignore: -1 masked. NaN is always masked."""
    import tensorflow as tf
    if policy not in POLICIES:
        raise ValueError(f"unknown uncertainty policy {policy!r} (ones | zeros | ignore)")
    t = tf.cast(targets, tf.float32)
    known = tf.logical_not(tf.math.is_nan(t))
    uncertain = tf.logical_and(known, t < 0)
    if policy == "ones":
        t = tf.where(uncertain, 1.0, t)
    elif policy == "zeros":
        t = tf.where(uncertain, 0.0, t)
    else:
        known = tf.logical_and(known, tf.logical_not(uncertain))
    return tf.where(known, t, 0.0), tf.cast(known, tf.float32)


def multilabel_loss(targets, logits, policy: str = "ignore"):
    """Sigmoid cross-entropy averaged over the (example, class) entries that count
    (0 when none does)."""
    import tensorflow as tf
    t, mask = uncertainty_targets(targets, policy)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=t, logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def multiclass_loss(labels, logits, sample_weight=None):
    """Softmax cross-entropy averaged over labeled examples (label >= 0); with
    sample_weight [B], sum(weight * ce) over them divided by their count (Keras'
    sum-over-batch-size reduction: class weights that average 1 keep the scale)."""
    import tensorflow as tf
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(labels >= 0, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(labels, 0), logits=tf.cast(logits, tf.float32))
    weighted = mask if sample_weight is None else mask * tf.cast(sample_weight, tf.float32)
    return tf.reduce_sum(ce * weighted) / tf.maximum(tf.reduce_sum(mask), 1.0)


def task_loss(task: str, labels, logits, policy: str = "ignore", sample_weight=None):
    """The task's loss; sample_weight [B] (class weights) is for multiclass only."""
    if task == MULTICLASS:
        return multiclass_loss(labels, logits, sample_weight)
    if sample_weight is not None:
        raise ValueError("per-example weights are for multiclass tasks")
    if task == MULTILABEL:
        return multilabel_loss(labels, logits, policy)
    check_task(task)


def balanced_class_weights(counts: list[int]) -> list[float]:
    """Per-class weights n / (K * n_k) over the K classes that have examples (sklearn's
    and Keras' "balanced"): every class then carries the same total weight and the
    weights average 1 over the examples. A class without examples gets 0."""
    total = sum(counts)
    present = sum(1 for c in counts if c > 0)
    return [total / (present * c) if c > 0 else 0.0 for c in counts]


def probabilities(task: str, logits):
    """Softmax (multiclass) or per-class sigmoid (multilabel) in float32."""
    import tensorflow as tf
    logits = tf.cast(logits, tf.float32)
    return tf.nn.softmax(logits, axis=-1) if task == MULTICLASS else tf.nn.sigmoid(logits)


__all__ = ["MULTICLASS", "MULTILABEL", "TASKS", "POLICIES", "check_task",
           "balanced_class_weights",
           "uncertainty_targets", "multilabel_loss", "multiclass_loss", "task_loss",
           "probabilities"]
