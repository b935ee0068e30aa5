"""Fine-tuning: losses against numpy references, freezing by stage, init from a
pretraining checkpoint, linear evaluation, label fractions, best checkpoint, early
stopping and resume."""
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import _finetune_runs as runs
from tfmicle.config import ConfigError, load_config
from tfmicle.train.finetune import finetune
from tfmicle.rundir import load_classifier
from tfmicle.models.classifier import build_classifier
from tfmicle.tasks import multiclass_loss, multilabel_loss, task_loss
from tfmicle.models.resnet import ResNetSpec, stage_of
from tfmicle.build import contrastive_model as build_contrastive_model


def np_multilabel_loss(targets, logits, policy):
    """Reference: mean binary cross-entropy over the entries that count."""
    total, n = 0.0, 0
    for t, z in zip(np.ravel(targets), np.ravel(logits)):
        if math.isnan(t):
            continue
        if t == -1:
            if policy == "ignore":
                continue
            t = 1.0 if policy == "ones" else 0.0
        p = 1.0 / (1.0 + math.exp(-z))
        total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
        n += 1
    return total / max(n, 1)


TARGETS = np.array([[1, 0, -1, np.nan], [-1, -1, 0, 1], [np.nan, np.nan, np.nan, np.nan],
                    [0, 1, 1, -1]], np.float32)


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
def test_multilabel_loss_matches_numpy(policy):
    logits = np.random.default_rng(0).normal(0, 2, TARGETS.shape).astype(np.float32)
    got = float(multilabel_loss(tf.constant(TARGETS), tf.constant(logits), policy))
    assert got == pytest.approx(np_multilabel_loss(TARGETS, logits, policy), rel=1e-5)


def test_multilabel_policies_differ_and_all_masked_is_zero():
    logits = np.full(TARGETS.shape, 0.7, np.float32)
    vals = {p: float(multilabel_loss(TARGETS, logits, p)) for p in ("ones", "zeros", "ignore")}
    assert len({round(v, 6) for v in vals.values()}) == 3
    assert float(multilabel_loss(np.full((2, 3), np.nan, np.float32),
                                 np.ones((2, 3), np.float32))) == 0.0


def test_multiclass_loss_matches_numpy_and_masks_unlabeled():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (5, 4)).astype(np.float32)
    labels = np.array([0, 3, -1, 2, 1])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    keep = labels >= 0
    want = -np.mean(np.log(p[keep, labels[keep]]))
    assert float(multiclass_loss(labels, logits)) == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_model_training_loss_is_the_numpy_loss():
    """The loss the train step reports (lr 0: weights unchanged) equals the numpy loss of
    the model's own training-mode logits under the model's policy (U-Zeros here; the
    function itself is checked for every policy above)."""
    spec = ResNetSpec(depth=18, width_multiplier=0.125, image_size=16, global_bn=False)
    keras.utils.set_random_seed(3)
    model = build_classifier(spec, 4, "multilabel", "zeros", zero_init_head=False)
    rng = np.random.default_rng(2)
    model.head.kernel.assign(rng.normal(0, 1, model.head.kernel.shape))  # logits far from 0
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x = rng.random((4, 16, 16, 3)).astype(np.float32)
    logits = model(x, training=True).numpy()
    got = model.train_on_batch(x, TARGETS, return_dict=True)["loss"]
    assert got == pytest.approx(np_multilabel_loss(TARGETS, logits, "zeros"), rel=1e-4)
    assert got != pytest.approx(np_multilabel_loss(TARGETS, logits, "ignore"), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lars", "momentum"])
def test_weight_decay_term_under_lars_is_the_heads_kernel_only(optimizer):
    """SimCLR's add_weight_decay: LARS decays the encoder itself and excludes the head,
    so the loss adds wd * ||head kernel||^2 / 2 (not the bias, not the encoder); other
    optimizers add the L2 term over the encoder's non-BN weights instead, not the head."""
    from tfmicle.optim import LARS
    spec = ResNetSpec(depth=18, width_multiplier=0.125, image_size=16, global_bn=False)
    keras.utils.set_random_seed(6)
    wd = 0.01
    model = build_classifier(spec, 3, "multiclass", weight_decay=wd, zero_init_head=False,
                             optimizer_decays=optimizer == "lars")
    rng = np.random.default_rng(7)
    kernel = rng.normal(0, 1, model.head.kernel.shape).astype(np.float32)
    model.head.kernel.assign(kernel)
    model.head.bias.assign(np.full(3, 5.0, np.float32))  # would show if the bias were decayed
    opt = LARS(0.0, weight_decay=wd) if optimizer == "lars" else keras.optimizers.SGD(0.0)
    model.compile(optimizer=opt)
    x = rng.random((4, 16, 16, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    logits = model(x, training=True).numpy().astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    ce = -np.mean(np.log(p[np.arange(4), y] / p.sum(1)))
    if optimizer == "lars":
        l2 = 0.5 * np.sum(kernel.astype(np.float64) ** 2)
    else:
        l2 = sum(0.5 * np.sum(v.numpy().astype(np.float64) ** 2)
                 for v in model.encoder.trainable_variables
                 if "batch_normalization" not in v.path)
    got = model.train_on_batch(x, y, return_dict=True)["loss"]
    assert got == pytest.approx(ce + wd * l2, rel=1e-4)


def test_freezing_by_stage_keeps_frozen_stages_and_their_batch_norm():
    spec = ResNetSpec(depth=18, width_multiplier=0.125, image_size=16, global_bn=False)
    keras.utils.set_random_seed(4)
    model = build_classifier(spec, 3, "multiclass", fine_tune_after_block=2)
    for layer in model.encoder.layers:
        if layer.weights:
            assert layer.trainable == (stage_of(layer.name) > 2), layer.name
    before = {v.path: v.numpy().copy() for v in model.encoder.weights}
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    rng = np.random.default_rng(5)
    for _ in range(3):  # the zero-initialised head lets gradients reach the encoder at step 2
        model.train_on_batch(rng.random((6, 16, 16, 3)).astype(np.float32),
                             rng.integers(0, 3, 6))
    changed_stages = set()
    for v in model.encoder.weights:
        stage = stage_of(v.path.split("/")[0])
        if not np.array_equal(before[v.path], v.numpy()):
            changed_stages.add(stage)
    assert changed_stages.isdisjoint({0, 1, 2}), changed_stages
    assert {3, 4} <= changed_stages


def _pretrained_encoder(pretrain_dir):
    """The pretraining checkpoint's encoder, restored the standard way (whole model)."""
    cfg = load_config(os.path.join(pretrain_dir, "config.yaml"))
    model = build_contrastive_model(cfg, 0)
    ckpt = tf.train.Checkpoint(model=model)
    ckpt.restore(tf.train.latest_checkpoint(os.path.join(pretrain_dir, "checkpoints"))
                 ).expect_partial()
    return {v.path: v.numpy() for v in model.encoder.weights}


@pytest.mark.slow
def test_finetune_starts_from_pretrained_encoder_and_trains(finetuned_run):
    run = finetuned_run
    want = _pretrained_encoder(run["pretrain_dir"])
    got = run["snapshot"]
    assert set(got) == set(want) and len(want) > 20
    for path, value in want.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    res = run["result"]
    assert res["end_step"] == res["total_steps"] == 4 and res["start_step"] == 0
    assert np.isfinite(res["final_metrics"]["loss"])
    model, *_ = load_classifier(run["model_dir"], "latest")
    moved = [p for p, v in want.items()
             if not np.array_equal(v, next(w.numpy() for w in model.encoder.weights
                                           if w.path == p))]
    assert len(moved) > len(want) // 2
    # Validation every 2 steps, best checkpoint by val_auc kept with its metrics.
    lines = [json.loads(x) for x in open(os.path.join(run["model_dir"], "validation.jsonl"))]
    assert [x["step"] for x in lines] == [2, 4]
    best = json.load(open(os.path.join(run["model_dir"], "best", "state.json")))
    vals = [x["val_auc"] for x in lines]
    assert best["metric"] == "val_auc" and best["value"] == pytest.approx(max(vals))
    assert best["step"] == lines[int(np.argmax(vals))]["step"]
    assert res["best_checkpoint"].endswith(os.path.join("best", "ckpt"))


@pytest.mark.slow
def test_linear_eval_leaves_encoder_unchanged(root, mc_records, pretrained_run):
    pre = pretrained_run
    cfg = runs.finetune_cfg(root, "ft_linear", [
        "finetune.init=checkpoint", f"finetune.checkpoint={pre}",
        "finetune.fine_tune_after_block=4", "train.train_steps=3", "data.eval_split=",
        "train.learning_rate=0.5"], mc_records)
    result = finetune(cfg, verbose=0)
    assert result["end_step"] == 3 and result["best_checkpoint"] is None
    model, *_ = load_classifier(cfg.model_dir, "auto")
    want = _pretrained_encoder(pre)
    for v in model.encoder.weights:  # kernels, BN gamma/beta and moving statistics
        np.testing.assert_array_equal(v.numpy(), want[v.path], err_msg=v.path)
    assert np.abs(model.head.kernel.numpy()).sum() > 0  # zero-initialised head trained


@pytest.mark.slow
def test_multilabel_label_fraction_early_stopping_and_resume(finetuned_ml_run):
    run = finetuned_ml_run
    res = run["result"]
    # Subset of 12 cases: 1-2 images each, case 7 has no targets (dropped).
    assert res["train_cases"] == 11
    assert res["train_images"] == sum(1 + c % 2 for c in range(12) if c != 7)
    assert res["early_stopped"] and res["end_step"] == 4 and res["total_steps"] == 10
    assert res["best"]["step"] == 2 and res["best"]["metric"] == "val_auc"
    again = finetune(run["cfg"], verbose=0)
    assert again["end_step"] == 4 and again["start_step"] == 4


def test_config_errors_are_one_line(root, mc_records):
    data = mc_records
    cases = [
        (["finetune.auc_classes=a,zzz"], "unknown class 'zzz'"),
        (["finetune.init=checkpoint"], "finetune.checkpoint is not set"),
        (["data.label_fraction=0.3"], "train-30pct.txt not found"),
        (["finetune.init=imagenet"], "model.depth 50"),
        (["data.eval_split=", "finetune.early_stopping_patience=2"], "needs data.eval_split"),
    ]
    for overrides, msg in cases:
        cfg = runs.finetune_cfg(root, "bad", overrides, data)
        with pytest.raises((ConfigError, FileNotFoundError), match=msg):
            finetune(cfg, verbose=0)
    with pytest.raises(ConfigError, match="best_metric"):
        load_config(runs.FT_TINY, ["finetune.best_metric=val_f1"])


def test_train_cli_finetune_usage_error(root, capsys):
    from tfmicle import train
    rc = train.main(["--config", runs.FT_TINY, "--model-dir", str(root / "cli_bad"),
                     "--set", f"data.dir={root / 'nowhere'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "dataset.json" in err[0]


@pytest.mark.parametrize("name", ["finetune_tiny", "finetune_derm", "finetune_chexpert"])
def test_shipped_finetune_configs_load(name):
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", name + ".yaml"))
    assert cfg.mode == "finetune"
    if name == "finetune_chexpert":
        assert cfg.finetune.auc_classes.split(",") == [
            "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
        assert cfg.finetune.uncertainty_policy == "ones"
