"""The fine-tuning model: an encoder plus a linear supervised head, trained with its
task's loss (tfmicle.tasks: softmax cross-entropy for multi-class, masked sigmoid
cross-entropy with a CheXpert uncertainty policy for multi-label), and freezing by stage.

Encoders:
- ours (tfmicle.models.resnet), initialised from a tfmicle pretraining checkpoint or
  from scratch;
- keras.applications ResNet50 for ``init: imagenet`` (the paper's supervised ImageNet
  baseline). Its weights cannot be mapped onto our encoder: keras.applications builds
  the original ResNet v1 (stride 2 in the first 1x1 conv of a stage, explicit zero
  padding of the stem, biased convolutions, BN epsilon 1.001e-5, Caffe BGR input)
  while ours is SimCLR's v1.5 (stride in the 3x3 conv, "same" padding, no conv bias).
  The biases could be folded into BN, but the stride placement and padding change the
  function, so the mapped network would not be the network the weights were trained
  as. We therefore wrap keras.applications' own ResNet50 behind our encoder's
  contract (images [B, H, W, 3] RGB in [0, 1] -> features [B, 2048] float32), with
  its Caffe preprocessing as the first layer, so everything downstream (freezing,
  fine-tuning, export, scoring) is the same for both encoders.
"""
from __future__ import annotations

import logging
import re

import keras
import tensorflow as tf
from keras import layers, ops

from tfmicle.models.heads import supervised_head
from tfmicle.models.resnet import STAGES, ResNetSpec, build_resnet, stage_of
from tfmicle.optim import EXCLUDE_DEFAULT
from tfmicle.tasks import MULTICLASS, POLICIES, check_task, task_loss

log = logging.getLogger(__name__)

IMAGENET_ENCODER = "resnet50_imagenet"
# keras.applications.resnet50.preprocess_input ("caffe"): BGR, 0-255, minus these means.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# Variables kept out of weight decay and LARS trust ratio: the optimizer's defaults plus
# keras.applications' batch norms ("conv2_block1_1_bn/gamma").
EXCLUDE = EXCLUDE_DEFAULT + (r"_bn/",)
# keras.applications ResNet50 layer-name prefixes -> our stage index (STAGES).
_IMAGENET_STAGES = (("conv1", 0), ("pool1", 0), ("conv2", 1), ("conv3", 2), ("conv4", 3),
                    ("conv5", 4))


# --------------------------------------------------------------------------- encoders

@keras.saving.register_keras_serializable(package="tfmicle")
class CaffePreprocess(layers.Layer):
    """RGB in [0, 1] -> keras.applications' "caffe" input (BGR, 0-255, mean removed)."""

    def call(self, x):
        x = ops.flip(ops.cast(x, self.compute_dtype), axis=-1) * 255.0
        return x - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=self.compute_dtype)


def build_imagenet_encoder(weights: str | None = "imagenet", dtype: str = "float32"
                           ) -> keras.Model:
    """keras.applications ResNet50 (no top, average pooling) as an encoder:
    images [B, H, W, 3] RGB in [0, 1] -> features [B, 2048] float32.

    weights: "imagenet" (Keras downloads and caches the file), a local weights file
    (the downloaded ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` or a
    ``.weights.h5`` saved by Keras), or None (random, for rebuilding a fine-tuned run).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        base = keras.applications.ResNet50(include_top=False, weights=weights,
                                           input_shape=(None, None, 3), pooling="avg")
    finally:
        keras.config.set_dtype_policy(previous)
    inputs = keras.Input((None, None, 3), name="images")
    x = CaffePreprocess(dtype=dtype, name="imagenet_preprocess")(inputs)
    x = base(x)
    x = layers.Activation("linear", dtype="float32", name="features")(x)
    return keras.Model(inputs, x, name=IMAGENET_ENCODER)


def imagenet_stage_of(layer_name: str) -> int:
    """Stage index (as STAGES) of a keras.applications ResNet50 layer; -1 outside."""
    for prefix, stage in _IMAGENET_STAGES:
        if layer_name.startswith(prefix + "_"):
            return stage
    return -1


def _leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def freeze_encoder(encoder: keras.Model, fine_tune_after_block: int) -> list[str]:
    """Freezes by stage as SimCLR's fine_tune_after_block: -1 trains everything; k in
    0..3 freezes the stem (0) through block_group k; 4 freezes the whole encoder
    (linear evaluation). Frozen batch norms run in inference mode (moving statistics
    kept). Returns the names of the frozen layers that hold weights."""
    k = int(fine_tune_after_block)
    if k < -1 or k > len(STAGES) - 1:
        raise ValueError(f"fine_tune_after_block must be -1..{len(STAGES) - 1}, got {k}")
    if k < 0:
        return []
    stage_fn = imagenet_stage_of if encoder.name == IMAGENET_ENCODER else stage_of
    frozen = []
    for layer in _leaf_layers(encoder):
        stage = stage_fn(layer.name)
        if k >= len(STAGES) - 1 or 0 <= stage <= k:
            layer.trainable = False
            if layer.weights:
                frozen.append(layer.name)
    if k >= len(STAGES) - 1:
        encoder.trainable = False
    return frozen


# --------------------------------------------------------------------------- model

class Classifier(keras.Model):
    """Encoder + linear head -> logits [B, K] (float32).

    Batches are (images [B, H, W, 3] in [0, 1], labels): multiclass labels [B] int
    (-1 unlabeled, masked), multilabel labels [B, K] float (1, 0, -1, NaN; see
    uncertainty_targets). As ContrastiveModel: the step loss is divided by
    num_replicas_in_sync (Keras sums replica gradients) and weight decay is an L2 term
    on weights that are not batch norm, bias or the head. With optimizer_decays (LARS,
    which decays the rest itself; build.optimizer_decays decides) the L2 term is on the
    head's kernel only, as SimCLR's add_weight_decay.
    """

    def __init__(self, encoder: keras.Model, num_classes: int, task: str = MULTICLASS,
                 uncertainty_policy: str = "ignore", weight_decay: float = 0.0,
                 projection: keras.Model | None = None, optimizer_decays: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        check_task(task)
        if uncertainty_policy not in POLICIES:
            raise ValueError(f"unknown uncertainty policy {uncertainty_policy!r}")
        self.encoder = encoder
        if projection is not None:  # unset otherwise, so older checkpoints keep their layout
            self.projection = projection
        self.head = supervised_head(num_classes)
        self.num_classes = int(num_classes)
        self.task = task
        self.uncertainty_policy = uncertainty_policy
        self.weight_decay = float(weight_decay)
        self.optimizer_decays = bool(optimizer_decays)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker] + ([self.accuracy_tracker] if self.task == MULTICLASS else [])

    def call(self, images, training=False):
        return self.features_and_logits(images, training=training)[1]

    def features_and_logits(self, images, training=False):
        """images -> (encoder features [B, C], logits [B, K]); the head reads the
        projection layers' output when the model keeps some (SimCLRv2's ft_proj_selector)."""
        feats = self.encoder(images, training=training)
        return feats, self.logits_of(feats, training=training)

    def logits_of(self, feats, training=False):
        """Encoder features [B, C] -> logits [B, K]: through the kept projection layers
        (if any), then the head. Grad-CAM differentiates this from the feature map."""
        projection = getattr(self, "projection", None)
        hidden = projection(feats, training=training) if projection is not None else feats
        return self.head(hidden)

    def build_all(self, image_size: int) -> None:
        """Creates every variable with a dummy forward pass."""
        self(tf.zeros([1, image_size, image_size, 3]), training=False)
        self.built = True

    def zero_init_head(self) -> None:
        """SimCLR's zero_init_logits_layer: head kernel and bias start at 0."""
        for v in self.head.weights:
            v.assign(tf.zeros_like(v))

    def loss_value(self, labels, logits, sample_weight=None) -> tf.Tensor:
        return task_loss(self.task, labels, logits, self.uncertainty_policy, sample_weight)

    def _l2_variables(self):
        return [v for v in self.trainable_variables
                if not any(re.search(p, v.path) for p in EXCLUDE)]

    def _step_losses(self, data, training: bool):
        images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
        logits = self(images, training=training)
        loss = self.loss_value(labels, logits, weights if training else None)
        total = loss
        if training and self.weight_decay > 0:
            # LARS decays the encoder itself but excludes the head (its name), so, as
            # SimCLR's add_weight_decay, the head's kernel gets an L2 term here instead.
            l2 = [self.head.kernel] if self.optimizer_decays else self._l2_variables()
            if l2:
                total = total + self.weight_decay * tf.add_n(
                    [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in l2])
        return total, loss, labels, logits

    def _record(self, total, labels, logits):
        self.loss_tracker.update_state(total)
        if self.task == MULTICLASS:
            labels = tf.cast(labels, tf.int32)
            mask = tf.cast(labels >= 0, tf.float32)
            hit = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                          tf.float32)
            self.accuracy_tracker.update_state(tf.reduce_sum(hit * mask) /
                                               tf.maximum(tf.reduce_sum(mask), 1.0))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            total, _, labels, logits = self._step_losses(data, training=True)
            scaled = total / replicas
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._record(total, labels, logits)

    def test_step(self, data):
        _, loss, labels, logits = self._step_losses(data, training=False)
        return self._record(loss, labels, logits)

    def get_config(self):
        return {"num_classes": self.num_classes, "task": self.task,
                "uncertainty_policy": self.uncertainty_policy,
                "weight_decay": self.weight_decay}


def build_classifier(spec: ResNetSpec | None, num_classes: int, task: str = MULTICLASS,
                     uncertainty_policy: str = "ignore", weight_decay: float = 0.0,
                     fine_tune_after_block: int = -1, imagenet_weights: str | None = None,
                     use_imagenet_encoder: bool = False, zero_init_head: bool = True,
                     image_size: int = 224, projection=None,
                     optimizer_decays: bool = False) -> Classifier:
    """A Classifier with every variable created and the freezing applied. Call inside
    the strategy scope. use_imagenet_encoder: keras.applications ResNet50 with
    imagenet_weights ("imagenet", a file, or None); otherwise our ResNet from spec.
    projection: None, or a function (encoder feature width -> the first layers of a
    projection head, heads.projection_head(keep=k)) the head then reads (never frozen:
    SimCLR fine-tunes them also in linear evaluation). optimizer_decays: the optimizer
    applies weight_decay itself (LARS), see Classifier."""
    if use_imagenet_encoder:
        encoder = build_imagenet_encoder(imagenet_weights,
                                         dtype=spec.dtype if spec is not None else "float32")
    else:
        encoder = build_resnet(spec)
    trunk = projection(int(encoder.output_shape[-1])) if projection is not None else None
    model = Classifier(encoder, num_classes, task, uncertainty_policy, weight_decay,
                       projection=trunk, optimizer_decays=optimizer_decays, name="classifier")
    model.build_all(spec.image_size if spec is not None else image_size)
    if zero_init_head:
        model.zero_init_head()
    frozen = freeze_encoder(encoder, fine_tune_after_block)
    if frozen:
        log.info("frozen: %d encoder layers with weights (fine_tune_after_block=%d)",
                 len(frozen), fine_tune_after_block)
    return model


__all__ = ["Classifier", "build_classifier", "build_imagenet_encoder", "freeze_encoder",
           "imagenet_stage_of", "CaffePreprocess", "IMAGENET_ENCODER", "EXCLUDE"]
