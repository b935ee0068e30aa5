"""Fine-tuning from a layer of the projection head (SimCLRv2's ft_proj_selector,
finetune.proj_layers): the layers come from the pretraining run, the classifier reads
their output, and export / scoring see it like any classifier."""
from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import _finetune_runs as runs
from tfmicle.config import ConfigError, load_config

pytestmark = pytest.mark.slow  # a pretraining run, a fine-tuning run and an export


class _Start(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.proj = {v.path: v.numpy().copy() for v in self.model.projection.weights}


def _pretrained_head(pretrain_dir: str) -> dict[str, np.ndarray]:
    """The pretraining run's projection-head layer 0, read the standard way."""
    from tfmicle.build import contrastive_model as build_contrastive_model
    cfg = load_config(os.path.join(pretrain_dir, "config.yaml"))
    model = build_contrastive_model(cfg, 0)
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(os.path.join(pretrain_dir, "checkpoints"))).expect_partial()
    dense = model.projection.get_layer("head_projection_dense0")
    bn = model.projection.get_layer("head_projection_batch_normalization0")
    return {"kernel": dense.kernel.numpy(), "gamma": bn.gamma.numpy(), "beta": bn.beta.numpy(),
            "mean": bn.moving_mean.numpy(), "var": bn.moving_variance.numpy()}


def test_classifier_on_the_first_projection_layer(root, capsys, mc_records, pretrained_run):
    from tfmicle import export as ex
    from tfmicle.rundir import load_classifier
    from tfmicle.train.finetune import finetune
    pre = pretrained_run  # tiny.yaml: a 2-layer head of width 128, out 32
    data = mc_records
    cfg = runs.finetune_cfg(root, "ft_proj", [
        "finetune.init=checkpoint", f"finetune.checkpoint={pre}", "finetune.proj_layers=1",
        "model.num_proj_layers=2", "model.proj_out_dim=32", "finetune.fine_tune_after_block=4",
        "train.train_steps=2", "finetune.eval_every_steps=2", "train.checkpoint_steps=2"], data)
    start = _Start()
    finetune(cfg, callbacks=[start], verbose=0)
    want = _pretrained_head(pre)
    got = {p.split("/")[-1]: v for p, v in start.proj.items()}
    assert len(got) == 5  # dense kernel and BN: the layer SimCLRv2 keeps, nothing else
    for mine, theirs in (("kernel", "kernel"), ("gamma", "gamma"), ("beta", "beta"),
                         ("moving_mean", "mean"), ("moving_variance", "var")):
        np.testing.assert_array_equal(got[mine], want[theirs], err_msg=mine)

    # The fine-tuned run read back: logits = head(relu(BN(features @ K))), in numpy.
    model, _, _, _ = load_classifier(cfg.model_dir)
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    feats = model.encoder(x, training=False).numpy().astype(np.float64)
    d = model.projection.get_layer("head_projection_dense0")
    bn = model.projection.get_layer("head_projection_batch_normalization0")
    h = feats @ d.kernel.numpy()
    h = (h - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-5)
    h = np.maximum(h * bn.gamma.numpy() + bn.beta.numpy(), 0)
    logits = h @ model.head.kernel.numpy() + model.head.bias.numpy()
    assert h.shape == (3, 128)  # the hidden layer (encoder width), not the 32-d output
    np.testing.assert_allclose(model(x).numpy(), logits, rtol=1e-4, atol=1e-5)

    # Exported and scored like any classifier: the scorer's entry point gives the same.
    out = root / "models_proj" / "derm"
    assert ex.main(["--model-dir", cfg.model_dir, "--out", str(out)]) == 0
    loaded = tf.saved_model.load(str(out / "1"))
    probs = loaded.predict_preprocessed(tf.constant(x))["probabilities"].numpy()
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), atol=1e-5)


def test_proj_layers_out_of_range_is_one_line(root, mc_records):
    from tfmicle.train.finetune import finetune
    cfg = runs.finetune_cfg(root, "ft_proj_bad", [
        "finetune.init=checkpoint", f"finetune.checkpoint={root}/pretrain",
        "finetune.proj_layers=4", "model.num_proj_layers=2"], mc_records)
    with pytest.raises(ConfigError,
                       match=r"finetune.proj_layers must be 0..model.num_proj_layers \(2\), got 4"):
        finetune(cfg, verbose=0)
