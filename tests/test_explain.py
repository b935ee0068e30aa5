"""Calibrated export and Grad-CAM explanations end to end, on a synthetic dataset where
only a small planted patch decides the class (red patch: class "red", blue patch:
class "blue", on grey noise). A tiny ResNet is fine-tuned through tfmicle.train, exported
with --calibrate validation, then:
- the SavedModel's probabilities equal softmax(logits / T) of the Keras model (numpy);
- the Grad-CAM heatmap peaks inside the patch for most test images;
- serving's /classify?explain=1 returns overlays and peaks (counted in /metrics), and a
  model without serving_explain answers it with a 400 while still classifying;
- score --explain writes overlays and the report's calibration numbers are those of
  the written predictions file."""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import png_bytes, write_records

pytestmark = pytest.mark.slow

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
RAW = 36    # raw side: the eval centre crop (0.875) keeps exactly rows / cols 2..33
SIZE = 32   # model input side
OFFSET = 2  # raw -> model input coordinates
PATCH = 10  # patch side in pixels
CLASSES = ["red", "blue"]
_cache: dict = {}


def patch_cases(n: int, seed: int, prefix: str) -> tuple[list[dict], list[tuple[int, int]]]:
    """Single-image cases of grey noise with one PATCH x PATCH patch (red for class 0,
    blue for 1) at a random place inside the model's crop; also the patch corners
    (row, col) in model-input coordinates."""
    rng = np.random.default_rng(seed)
    cases, corners = [], []
    for c in range(n):
        label = c % 2
        a = rng.integers(70, 180, (RAW, RAW, 1)).repeat(3, axis=2).astype(np.uint8)
        r, q = rng.integers(0, SIZE - PATCH + 1, 2)
        colour = (230, 30, 30) if label == 0 else (30, 30, 230)
        a[OFFSET + r:OFFSET + r + PATCH, OFFSET + q:OFFSET + q + PATCH] = colour
        cases.append({"case_id": f"{prefix}{c:04d}", "images": [png_bytes(a)],
                      "image_ids": [f"{prefix}{c:04d}.png"], "label_class": label})
        corners.append((int(r), int(q)))
    return cases, corners


def trained(tmp_root) -> dict:
    """Records, a fine-tuned run and its calibrated export (once per session)."""
    if "run" in _cache:
        return _cache["run"]
    from tfmicle.config import load_config
    from tfmicle.export import ExportOptions, export
    from tfmicle.train.finetune import finetune

    data = os.path.join(str(tmp_root), "patch_records")
    train, _ = patch_cases(128, 0, "t")
    valid, _ = patch_cases(48, 1, "v")
    for c in valid[4::5]:  # 20 % label noise: a split no model gets all right, so the
        c["label_class"] = 1 - c["label_class"]  # NLL-optimal temperature is finite
    test, corners = patch_cases(40, 2, "x")
    write_records(data, "train", train, CLASSES)
    write_records(data, "validation", valid, CLASSES)
    write_records(data, "test", test, CLASSES)
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                   "finetune_tiny.yaml"),
                      [f"data.dir={data}", f"model_dir={tmp_root}/patch_run",
                       "data.augment=none", "train.batch_size=16", "train.train_steps=120",
                       "train.learning_rate=0.05", "finetune.eval_every_steps=120",
                       "train.checkpoint_steps=120", "train.log_steps=40"])
    finetune(cfg, verbose=0)
    out = export(cfg.model_dir, os.path.join(str(tmp_root), "models", "patch"),
                 ExportOptions(calibrate="validation"))
    _cache["run"] = {"data": data, "model_dir": cfg.model_dir, "export": out,
                     "test": test, "corners": corners}
    return _cache["run"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("explain"))


def test_export_bakes_in_the_fitted_temperature(run):
    import tensorflow as tf

    from tfmicle.calibration import scaled_probabilities
    from tfmicle.data.augment import preprocess_eval
    from tfmicle.rundir import load_classifier

    meta = json.load(open(os.path.join(run["export"]["path"], "assets", "metadata.json")))
    cal = meta["calibration"]
    t = cal["temperature"]
    assert cal["split"] == "validation" and cal["num_images"] == 48 and t != 1.0
    assert not cal["at_bound"]
    assert cal["after"]["nll"] <= cal["before"]["nll"] + 1e-12
    images = [c["images"][0] for c in run["test"][:8]]
    loaded = tf.saved_model.load(run["export"]["path"])
    got = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"]
    model, *_ = load_classifier(run["model_dir"])
    pixels = tf.stack([preprocess_eval(tf.constant(b), SIZE) for b in images])
    z = model(pixels, training=False).numpy().astype(np.float64)
    e = np.exp(z / t - (z / t).max(1, keepdims=True))
    want = e / e.sum(1, keepdims=True)  # softmax(logits / T), by hand
    np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
    # and T = 1 would not match (the check can fail)
    assert np.max(np.abs(scaled_probabilities("multiclass", z, 1.0) - want)) > 1e-3
    # validation NLL / ECE before and after, recomputed from the split's logits
    from tfmicle import calibration as C
    from tfmicle.export import split_logits
    zv, yv = split_logits(model, "multiclass", run["data"], "validation", 2, SIZE)
    for when, temp in (("before", 1.0), ("after", t)):
        pv = scaled_probabilities("multiclass", zv, temp)
        assert cal[when]["nll"] == pytest.approx(-np.mean(np.log(pv[np.arange(len(yv)), yv])))
        assert cal[when]["ece"] == pytest.approx(C.calibration_metrics("multiclass", pv, yv)["ece"])


def test_over_confident_copy_gets_five_times_the_temperature(run, tmp_path):
    """The run's classifier with its head scaled by 5 (logits x 5, same predictions):
    export --calibrate fits T' = 5 T (NLL(5 z / T') is NLL(z / T) at T' = 5 T) and its
    validation NLL before calibration is worse."""
    import shutil

    from tfmicle.export import ExportOptions, export
    from tfmicle.rundir import load_classifier, write_best
    copy = str(tmp_path / "overconfident_run")
    shutil.copytree(run["model_dir"], copy)
    model, *_ = load_classifier(copy)
    for v in model.head.weights:
        v.assign(5.0 * v)
    write_best(model, copy)
    cal5 = export(copy, str(tmp_path / "models" / "x5"),
                  ExportOptions(calibrate="validation"))["metadata"][
        "calibration"]
    cal1 = run["export"]["metadata"]["calibration"]
    assert cal5["temperature"] == pytest.approx(5 * cal1["temperature"], rel=1e-3)
    assert cal5["after"]["nll"] == pytest.approx(cal1["after"]["nll"], rel=1e-4)
    assert cal5["before"]["nll"] > cal1["before"]["nll"] > cal5["after"]["nll"] - 1e-9


def test_grad_cam_peak_falls_inside_the_planted_patch(run):
    import tensorflow as tf

    images = [c["images"][0] for c in run["test"]]
    labels = np.array([c["label_class"] for c in run["test"]])
    fn = tf.saved_model.load(run["export"]["path"]).signatures["serving_explain"]
    out = fn(images=tf.constant(images), classes=tf.fill([len(images)], -1))
    heat = out["heatmap"].numpy()
    assert heat.shape == (40, SIZE, SIZE) and heat.min() >= 0 and heat.max() <= 1
    probs = out["probabilities"].numpy()
    assert np.mean(np.argmax(probs, 1) == labels) >= 0.9, "the tiny model did not learn"
    inside = []
    for h, (r, q) in zip(heat, run["corners"]):
        pr, pc = np.unravel_index(np.argmax(h), h.shape)
        inside.append(r <= pr < r + PATCH and q <= pc < q + PATCH)
    # A random point of the crop lies in the 10 x 10 patch about 10 % of the time.
    assert np.mean(inside) >= 0.75, f"peak inside the patch for {np.mean(inside):.0%}"
    # the requested class is honoured
    other = fn(images=tf.constant(images[:2]), classes=tf.constant([1, 0], tf.int32))
    assert other["explained_class"].numpy().tolist() == [1, 0]


def _app_client(base):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingConfig
    return TestClient(create_app(ServingConfig(model_base_path=str(base), poll_seconds=0)))


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_serving_explain_option(run, tmp_path):
    from PIL import Image

    from serving.toy import save_mean_colour_model
    images = [run["test"][i]["images"][0] for i in (0, 1)]
    with _app_client(os.path.dirname(run["export"]["path"])) as c:
        plain = c.post("/classify", files=[("files", (f"{i}.png", d)) for i, d in enumerate(images)])
        assert plain.status_code == 200 and "explanation" not in plain.json()["images"][0] \
            or plain.json()["images"][0].get("explanation") is None
        r = c.post("/classify", params={"explain": 1},
                   files=[("files", (f"{i}.png", d)) for i, d in enumerate(images)])
        assert r.status_code == 200, r.text
        body = r.json()
        for got, want, (pr, pq), case in zip(body["images"], plain.json()["images"],
                                              run["corners"][:2], run["test"][:2]):
            ex = got["explanation"]
            assert ex["label"] == CLASSES[case["label_class"]] == got["top"][0]["label"]
            assert got["top"][0]["score"] == pytest.approx(want["top"][0]["score"], abs=1e-5)
            png = Image.open(io.BytesIO(base64.b64decode(ex["overlay_png"])))
            assert png.format == "PNG" and png.size[0] >= SIZE
            assert ex["peak"]["size"] == SIZE and 0 <= ex["peak"]["row"] < SIZE
        m = c.get("/metrics").text
        assert _metric(m, "serving_explain_requests_total") == 1
        assert _metric(m, "serving_explain_images_total") == 2
    # a model exported without serving_explain: classify works, explain=1 is a clear 400
    base = tmp_path / "colours"
    w = np.eye(3, dtype=np.float32)
    save_mean_colour_model(base / "1", w, np.zeros(3, np.float32), labels=["r", "g", "b"])
    with _app_client(base) as c:
        assert c.post("/classify", files=[("files", ("a.png", images[0]))]).status_code == 200
        r = c.post("/classify?explain=1", files=[("files", ("a.png", images[0]))])
        assert r.status_code == 400 and "serving_explain" in r.json()["error"]
        assert _metric(c.get("/metrics").text, "serving_explain_requests_total") == 0


def _ece_reference(conf, correct, bins=15):
    """ECE written out loop by loop (independent of tfmicle.calibration)."""
    total, n = 0.0, len(conf)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = [(c > lo or (b == 0 and c == 0)) and c <= hi for c in conf]
        k = sum(m)
        if k:
            acc = sum(x for x, mm in zip(correct, m) if mm) / k
            cf = sum(x for x, mm in zip(conf, m) if mm) / k
            total += k / n * abs(acc - cf)
    return total


def test_score_explain_and_calibration_from_the_predictions_file(run, tmp_path, capsys):
    out = tmp_path / "score"
    r = subprocess.run([sys.executable, "-m", "tfmicle.score", "--model", run["export"]["path"],
                        "--data", run["data"], "--split", "test", "--out", str(out),
                        "--explain", "2", "--bootstrap", "50", "--quiet"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.load(open(out / "metrics.json"))
    rows = list(csv.DictReader(open(out / "predictions_cases.csv")))
    p = np.array([[float(row[f"prob_{c}"]) for c in CLASSES] for row in rows])
    y = np.array([CLASSES.index(row["label"]) for row in rows])
    conf = p.max(1).tolist()
    correct = (p.argmax(1) == y).astype(float).tolist()
    cal = metrics["calibration"]["case"]
    assert cal["ece"] == pytest.approx(_ece_reference(conf, correct), abs=1e-9)
    assert cal["brier"] == pytest.approx(np.mean(np.sum((p - np.eye(2)[y]) ** 2, 1)), abs=1e-9)
    lo, hi = cal["ci95"]["ece"]
    report = (out / "report.md").read_text()
    assert f"| ECE (15 bins, top-class confidence), case level | {cal['ece']:.3f} " \
           f"({lo:.3f}–{hi:.3f})" in report
    # image level, from predictions_images.csv
    imgs = list(csv.DictReader(open(out / "predictions_images.csv")))
    pi = np.array([[float(row[f"prob_{c}"]) for c in CLASSES] for row in imgs])
    yi = np.array([CLASSES.index(row["label"]) for row in imgs])
    assert metrics["calibration"]["image"]["ece"] == pytest.approx(
        _ece_reference(pi.max(1).tolist(), (pi.argmax(1) == yi).astype(float).tolist()),
        abs=1e-9)
    assert metrics["calibration"]["image"]["nll"] == pytest.approx(
        -np.mean(np.log(pi[np.arange(len(yi)), yi])), abs=1e-9)
    assert "## Explanations (Grad-CAM)" in report and (out / "reliability.png").is_file()
    ex = list(csv.DictReader(open(out / "explain" / "explanations.csv")))
    correct_rows = [e for e in ex if e["kind"] == "correct"]
    assert len(correct_rows) == 2 and all((out / e["png"]).is_file() for e in ex)
    # the two most confident correct predictions, read off predictions_images.csv
    ok = [(max(float(i[f"prob_{c}"]) for c in CLASSES), i["image_id"]) for i in imgs
          if i["label"] == i["predicted"]]
    top2 = [i for _, i in sorted(ok, key=lambda t: -t[0])[:2]]
    assert [e["image_id"] for e in correct_rows] == top2
    assert f"![](explain/{os.path.basename(correct_rows[0]['png'])})" in report
    # a model without serving_explain: --explain is a one-line usage error (exit 2)
    from serving.toy import save_mean_colour_model
    save_mean_colour_model(tmp_path / "toy" / "1", np.eye(3, 2, dtype=np.float32),
                           np.zeros(2, np.float32), labels=CLASSES)
    from tfmicle.score import main
    code = main(["--model", str(tmp_path / "toy"), "--data", run["data"],
                 "--out", str(tmp_path / "s2"), "--explain", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "serving_explain" in err and "Traceback" not in err
