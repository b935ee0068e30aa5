"""NT-Xent (normalized temperature-scaled cross-entropy), SimCLR's contrastive loss,
with negatives gathered from every replica."""
from __future__ import annotations

import tensorflow as tf

LARGE_NUM = 1e9


def _cross_replica_gather(x: tf.Tensor) -> tf.Tensor:
    """Concatenates x [b, d] of every replica along axis 0 (replica order) -> [R*b, d].

    Outside a replica context (or with one replica) returns x unchanged.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_gather(x, axis=0)


def _replica_id() -> tf.Tensor:
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tf.constant(0, tf.int32)
    rid = ctx.replica_id_in_sync_group
    return tf.cast(rid, tf.int32)


def nt_xent_loss(z1: tf.Tensor, z2: tf.Tensor, temperature: float = 0.1,
                 normalize: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """SimCLR's NT-Xent loss of one replica's share of the batch.

    z1, z2: [b, d] projections of the two views of the same b examples (this replica).
    For each anchor z1[i] the positive is z2[i]; the negatives are every other z2[j] and
    every z1[j] (j != i) of all replicas (self-similarity masked). Both directions
    (z1 -> z2 and z2 -> z1) are summed; the result is the mean over this replica's b
    anchors, so the global loss is the mean of the replicas' losses.

    Returns (loss [], contrastive accuracy []) in float32: accuracy is the fraction of
    z1 anchors whose most similar candidate is their own positive.
    """
    z1 = tf.cast(z1, tf.float32)
    z2 = tf.cast(z2, tf.float32)
    if normalize:
        z1 = tf.math.l2_normalize(z1, axis=-1)
        z2 = tf.math.l2_normalize(z2, axis=-1)
    b = tf.shape(z1)[0]
    z1_all = _cross_replica_gather(z1)
    z2_all = _cross_replica_gather(z2)
    n = tf.shape(z1_all)[0]
    # Positions of this replica's anchors inside the gathered batch.
    idx = tf.range(b) + _replica_id() * b
    labels = tf.one_hot(idx, n * 2)
    self_mask = tf.one_hot(idx, n)

    logits_aa = tf.matmul(z1, z1_all, transpose_b=True) / temperature - self_mask * LARGE_NUM
    logits_bb = tf.matmul(z2, z2_all, transpose_b=True) / temperature - self_mask * LARGE_NUM
    logits_ab = tf.matmul(z1, z2_all, transpose_b=True) / temperature
    logits_ba = tf.matmul(z2, z1_all, transpose_b=True) / temperature

    logits_a = tf.concat([logits_ab, logits_aa], axis=1)
    logits_b = tf.concat([logits_ba, logits_bb], axis=1)
    loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, logits_a)
    loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, logits_b)
    loss = tf.reduce_mean(loss_a + loss_b)
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits_a, axis=1, output_type=tf.int32),
                                          idx), tf.float32))
    return loss, acc
