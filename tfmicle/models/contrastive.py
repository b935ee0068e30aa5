"""ContrastiveModel: SimCLR / MICLe pretraining as a keras.Model with a custom train_step."""
from __future__ import annotations

import re

import keras
import tensorflow as tf

from tfmicle.losses import nt_xent_loss
from tfmicle.models.heads import supervised_head
from tfmicle.optim import EXCLUDE_DEFAULT


class ContrastiveModel(keras.Model):
    """Encoder + projection head trained with NT-Xent on two views.

    Batches are dicts: view1, view2 [B, H, W, 3] float in [0, 1] and optionally label
    [B] int (-1 = unlabeled). SimCLR and MICLe differ only in how the pipeline picks the
    two views (two augmentations of one image vs. of two images of one case).

    - The gradient loss is divided by num_replicas_in_sync: Keras sums replica gradients.
    - Negatives come from all replicas (nt_xent_loss all_gathers inside replica context).
    - Weight decay is an L2 term (0.5 * wd * ||w||^2) on variables that are not batch
      norm / bias / supervised head, unless optimizer_decays: the optimizer applies it
      itself (LARS; build.optimizer_decays decides, where the optimizer is chosen).
    - num_classes > 0 adds an online linear probe on stop-gradient features of view1,
      trained on labeled examples only.
    - A batch's optional same_case [B] (other examples of the batch from the same case,
      from the pipeline) is reported as same_case_pairs: false-negative pairs per global
      batch, which the pipelines keep at 0.
    """

    def __init__(self, encoder: keras.Model, projection: keras.Model, num_classes: int = 0,
                 temperature: float = 0.1, weight_decay: float = 0.0,
                 optimizer_decays: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.projection = projection
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)
        self.weight_decay = float(weight_decay)
        self.optimizer_decays = bool(optimizer_decays)
        self.probe = supervised_head(num_classes) if num_classes > 0 else None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.contrast_loss_tracker = keras.metrics.Mean(name="contrast_loss")
        self.contrast_acc_tracker = keras.metrics.Mean(name="contrast_acc")
        self.probe_loss_tracker = keras.metrics.Mean(name="probe_loss")
        self.probe_acc_tracker = keras.metrics.Mean(name="probe_acc")
        self.same_case_tracker = keras.metrics.Mean(name="same_case_pairs")

    @property
    def metrics(self):
        m = [self.loss_tracker, self.contrast_loss_tracker, self.contrast_acc_tracker,
             self.same_case_tracker]
        if self.probe is not None:
            m += [self.probe_loss_tracker, self.probe_acc_tracker]
        return m

    def call(self, images, training=False):
        """images [B, H, W, 3] (or a batch dict: its view1) -> projections [B, proj_out_dim]."""
        if isinstance(images, dict):
            images = images["view1"]
        return self.projection(self.encoder(images, training=training), training=training)

    def build_all(self, image_size: int) -> None:
        """Creates every variable (encoder, heads, probe) with a dummy forward pass."""
        x = tf.zeros([2, image_size, image_size, 3])
        feats = self.encoder(x, training=False)
        self.projection(feats, training=False)
        if self.probe is not None:
            self.probe(feats)
        self.built = True

    def _l2_variables(self):
        return [v for v in self.trainable_variables
                if not any(re.search(p, v.path) for p in EXCLUDE_DEFAULT)]

    def _contrastive_losses(self, data, training: bool):
        v1, v2 = data["view1"], data["view2"]
        b = tf.shape(v1)[0]
        feats = self.encoder(tf.concat([v1, v2], axis=0), training=training)
        z = self.projection(feats, training=training)
        closs, cacc = nt_xent_loss(z[:b], z[b:], temperature=self.temperature)
        total = closs
        probe_loss = tf.constant(0.0)
        probe_acc = tf.constant(0.0)
        if self.probe is not None and "label" in data:
            labels = tf.cast(data["label"], tf.int32)
            logits = self.probe(tf.stop_gradient(feats[:b]))
            mask = tf.cast(labels >= 0, tf.float32)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.maximum(labels, 0), tf.cast(logits, tf.float32))
            n = tf.maximum(tf.reduce_sum(mask), 1.0)
            probe_loss = tf.reduce_sum(ce * mask) / n
            hit = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
            probe_acc = tf.reduce_sum(hit * mask) / n
            total = total + probe_loss
        if self.weight_decay > 0 and not self.optimizer_decays:
            total = total + self.weight_decay * tf.add_n(
                [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in self._l2_variables()])
        return total, closs, cacc, probe_loss, probe_acc

    def _record_metrics(self, data, total, closs, cacc, probe_loss, probe_acc):
        if "same_case" in data:
            # Mean over the examples of all replicas of same_case * B / 2 = the global
            # batch's pairs (each pair counted from both of its examples).
            same = tf.cast(data["same_case"], tf.float32)
            global_b = tf.cast(tf.shape(same)[0] * tf.distribute.get_strategy()
                               .num_replicas_in_sync, tf.float32)
            self.same_case_tracker.update_state(same * global_b / 2.0)
        self.loss_tracker.update_state(total)
        self.contrast_loss_tracker.update_state(closs)
        self.contrast_acc_tracker.update_state(cacc)
        if self.probe is not None:
            self.probe_loss_tracker.update_state(probe_loss)
            self.probe_acc_tracker.update_state(probe_acc)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            out = self._contrastive_losses(data, training=True)
            scaled = out[0] / replicas
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._record_metrics(data, *out)

    def test_step(self, data):
        return self._record_metrics(data, *self._contrastive_losses(data, training=False))

    def get_config(self):
        return {"num_classes": self.num_classes, "temperature": self.temperature,
                "weight_decay": self.weight_decay}
