"""The README's "Start from SimCLRv2" path on the fixture's official-format checkpoint
(../shared/fixtures/simclrv2_tf1): import, continued MICLe pretraining (starting from
exactly the checkpoint's values), fine-tuning, export and serving. Small images and a
couple of steps each; the ResNet-50 (1x) is the real size."""
from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from conftest import shared_path

shared_path("fixtures", "simclrv2_tf1", module=True)

import _simclr_tf1 as fx  # noqa: E402
from conftest import synthetic_cases, write_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


class _Before(keras.callbacks.Callback):
    """Encoder + projection weights (by path) and the step when training starts; the
    weights again when it ends."""

    def on_train_begin(self, logs=None):
        m = self.model
        self.step = int(m.optimizer.iterations.numpy())
        self.weights = {v.path: v.numpy().copy() for v in m.encoder.weights + m.projection.weights}
        from tfmicle import build
        from tfmicle.models import simclr_tf1
        from tfmicle.models.resnet import build_resnet_in_order
        _, convs, bns = build_resnet_in_order(build.resnet_spec(self.cfg, global_bn=False))
        self.tf1_name = {v.path: n for n, v in simclr_tf1.variable_map(
            m.encoder, convs, bns, m.projection, 3, None).items()}

    def on_train_end(self, logs=None):
        m = self.model
        self.after = {v.path: v.numpy().copy() for v in m.encoder.weights + m.projection.weights}


def test_import_continue_finetune_export_serve(simclr_r50_checkpoint, tmp_path, capsys):
    httpx = pytest.importorskip("httpx")
    from serving_harness import ServerProcess, encode, random_pixels
    from tfmicle.config import load_config
    from tfmicle.export import main as export_main
    from tfmicle.import_checkpoint import main as import_main
    from tfmicle.train.cli import main as train_main
    from tfmicle.train.pretrain import pretrain

    imported = str(tmp_path / "simclrv2_r50_1x_sk0")
    assert import_main(["--simclr-tf1", simclr_r50_checkpoint, "--out", imported]) == 0
    data = str(tmp_path / "records")
    write_records(data, "train", synthetic_cases(8, 2, size=72), ["a", "b", "c"])
    write_records(data, "validation", synthetic_cases(3, 1, size=72, seed=1), ["a", "b", "c"])

    small = ["data.image_size=64", "train.batch_size=4", "train.train_steps=2",
             "train.log_steps=2", "train.checkpoint_steps=2", "train.precision=float32",
             "distribute.strategy=default", "model.global_bn=false"]
    cfg = load_config(os.path.join(ROOT, "configs", "derm_micle_r50_1x_simclrv2.yaml"), small + [
        f"data.dir={data}", f"model_dir={tmp_path / 'micle'}", f"pretrain.checkpoint={imported}"])
    before = _Before()
    before.cfg = cfg
    res = pretrain(cfg, callbacks=[before], verbose=0)
    # Fresh optimizer and step; the weights are the TF1 checkpoint's, value by value
    # (its values rule, independent of the import), for the encoder and the head.
    assert before.step == 0 and (res["start_step"], res["end_step"]) == (0, 2)
    rule = {name: (i, shape, kind) for i, (name, shape, _, kind)
            in enumerate(fx.variables("r50_1x_sk0"))}
    assert set(before.tf1_name) == set(before.weights)
    assert len(before.weights) == 281 - 2  # all model variables but the 1000-class head
    for path, name in before.tf1_name.items():
        i, shape, kind = rule[name]
        np.testing.assert_array_equal(before.weights[path], fx.rule_value(i, name, shape, kind),
                                      err_msg=name)
    assert np.isfinite(res["final_metrics"]["loss"])
    moved = sum(not np.array_equal(before.weights[p], before.after[p]) for p in before.weights)
    assert moved > len(before.weights) // 2  # then it trained

    rc = train_main(["--config", os.path.join(ROOT, "configs", "finetune_tiny.yaml"),
                     "--model-dir", str(tmp_path / "ft"), "-q", "--set", f"data.dir={data}",
                     "--set", "finetune.init=checkpoint", "--set",
                     f"finetune.checkpoint={tmp_path / 'micle'}", "--set", "model.depth=50",
                     "--set", "model.width_multiplier=1", "--set", "data.image_size=64",
                     "--set", "train.train_steps=2", "--set", "train.batch_size=4",
                     "--set", "finetune.eval_every_steps=2", "--set", "train.checkpoint_steps=2",
                     "--set", "train.learning_rate=0.01"])
    assert rc == 0, capsys.readouterr().err
    models = tmp_path / "models" / "derm"
    assert export_main(["--model-dir", str(tmp_path / "ft"), "--out", str(models)]) == 0
    with ServerProcess(models, "--poll-seconds", "0") as server, \
            httpx.Client(base_url=server.url, timeout=120) as c:
        image = encode(random_pixels(np.random.default_rng(0), 80, 80))
        r = c.post("/classify", files=[("files", ("x.png", image))], params={"top_k": 3})
        assert r.status_code == 200, r.text
        scores = [x["score"] for x in r.json()["images"][0]["top"]]
        assert len(scores) == 3 and abs(sum(scores) - 1) < 1e-4
