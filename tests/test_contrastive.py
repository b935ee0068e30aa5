"""ContrastiveModel details: the L2 weight-decay term for non-LARS optimizers, the online
probe ignoring unlabeled examples, and the runner stopping on a NaN loss."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmicle.config import Config, TrainConfig
from tfmicle.train import runner
from tfmicle.models.contrastive import ContrastiveModel
from tfmicle.models.heads import projection_head
from tfmicle.models.resnet import ResNetSpec, build_resnet


def _model(weight_decay=0.0, num_classes=3):
    enc = build_resnet(ResNetSpec(depth=18, width_multiplier=0.125, image_size=16))
    m = ContrastiveModel(enc, projection_head(enc.output_shape[-1], 2, 8),
                         num_classes=num_classes, weight_decay=weight_decay)
    m.build_all(16)
    return m


def _batch(labels):
    rng = np.random.default_rng(0)
    n = len(labels)
    return {"view1": tf.constant(rng.random((n, 16, 16, 3), dtype=np.float32)),
            "view2": tf.constant(rng.random((n, 16, 16, 3), dtype=np.float32)),
            "label": tf.constant(labels, tf.int32)}


def test_l2_term_skips_batch_norm_bias_and_head_for_non_lars_optimizers():
    m = _model(weight_decay=1e-3)
    m.compile(optimizer=keras.optimizers.SGD(0.0))
    total, closs, _, ploss, _ = m._contrastive_losses(_batch([0, 1, 2, 0]), training=False)
    expected = 0.0
    for v in m.trainable_variables:
        if not any(s in v.path for s in ("batch_normalization", "bias", "head_supervised")):
            expected += 0.5 * 1e-3 * float(np.sum(np.square(v.numpy().astype(np.float64))))
    assert expected > 0
    np.testing.assert_allclose(float(total - closs - ploss), expected, rtol=1e-4)


def test_probe_ignores_unlabeled_examples():
    m = _model()
    m.compile(optimizer=keras.optimizers.SGD(0.0))
    b = _batch([2, -1, 0, -1])
    _, _, _, ploss, _ = m._contrastive_losses(b, training=False)
    feats = m.encoder(b["view1"], training=False)
    logits = m.probe(feats).numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -(logp[0, 2] + logp[2, 0]) / 2
    np.testing.assert_allclose(float(ploss), expected, rtol=1e-4)


@pytest.mark.slow
def test_runner_stops_on_nan_loss(tmp_path):
    m = _model(num_classes=0)
    m.compile(optimizer=keras.optimizers.SGD(1e30))
    bad = _batch([0, 1, 2, 0])
    bad["view1"] = bad["view1"] * np.float32(np.nan)
    ds = tf.data.Dataset.from_tensors(bad).repeat()
    with pytest.raises(runner.NaNLossError, match="NaN"):
        runner.fit_steps(m, ds, Config(model_dir=str(tmp_path),
                                       train=TrainConfig(checkpoint_steps=2, log_steps=3)),
                         total_steps=6, verbose=0)
