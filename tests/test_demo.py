"""The demo's quick mode, run as a user runs it, leaves every promised artefact."""
import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ph2_manifest_groups_patches_by_lesion(tmp_path):
    from tfmicle.data import ph2
    from tfmicle.demo import lesion_labels
    patches, counts = ph2.load_patches(ph2.patches_root())
    labels = lesion_labels(patches)
    ph2.write_manifest(str(tmp_path / "m.csv"), patches, label=lambda p: labels[p.case_id])
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert len(rows) == counts["patches"] and counts["lesions"] >= 190
    for r in rows:
        k = int(os.path.basename(r["image"])[5:-5])
        assert r["case_id"] == f"lesion{k // 10:03d}"       # patch k is cut from lesion k//10
        assert not (r["image"].startswith("nonSimilar") and r["image"].endswith("b.bmp"))
    labels = {}
    for r in rows:
        labels.setdefault(r["case_id"], set()).add(r["label"])
    assert all(len(v) == 1 for v in labels.values())           # one label per lesion
    n_dark = sum(v == {"dark"} for v in labels.values())
    assert abs(n_dark - len(labels) / 2) <= 1                   # split at the median lesion


def test_sample_image_is_a_png_ph2_patch(tmp_path):
    import numpy as np
    from PIL import Image

    from tfmicle.data import ph2
    from tfmicle.demo import SAMPLE_PATCH, write_sample
    path = write_sample(str(tmp_path))
    assert path == str(tmp_path / "sample.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"      # a type /classify takes as it is
    got = np.asarray(Image.open(path))
    want = np.asarray(Image.open(os.path.join(ph2.patches_root(), *SAMPLE_PATCH)).convert("RGB"))
    assert got.shape == (32, 32, 3) and (got == want).all()


def test_summary_ends_with_the_serve_command_and_a_sample_request():
    from tfmicle.demo import summary
    res = {"manifest": "o/m.csv", "records": "o/records", "pretrain_dir": "o/runs/micle",
           "finetune_dir": "o/runs/finetune", "models": "/x/demo_out/models/ph2",
           "report": "o/score", "sample": "/x/demo_out/sample.png",
           "metrics": {"image": {"top1_accuracy": 0.75}},
           "pretraining": {"final_contrast_loss": None},
           "retrieval": {"lesions": 5, "queries": 9, **{k: {"top1": 0.5, "map": 0.4} for k in
                                                         ("micle", "random_init", "chance")}}}
    text = summary(res)
    assert text.splitlines()[-2:] == [
        "  .venv/bin/python -m serving --model-base-path /x/demo_out/models/ph2 --port 8000",
        "  curl -F files=@/x/demo_out/sample.png http://127.0.0.1:8000/classify"]
    assert summary(res, 9000).endswith("http://127.0.0.1:9000/classify")


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "tfmicle.demo", "--quick", "-q", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tfmicle demo done" in r.stdout
    assert f"-m serving --model-base-path {out / 'models' / 'ph2'} --port 8000" in r.stdout
    assert f"curl -F files=@{out / 'sample.png'} " in r.stdout and (out / "sample.png").is_file()
    summary = json.load(open(out / "summary.json"))
    assert os.path.exists(os.path.join(summary["models"], "1", "saved_model.pb"))
    assert os.path.exists(os.path.join(summary["records"], "dataset.json"))
    assert os.path.exists(os.path.join(summary["report"], "report.md"))
    assert summary["metrics"], "score wrote no metrics.json"
    # the model card: written at export, and scored with held-out results
    card = json.load(open(os.path.join(summary["report"], "model_card.json")))
    assert os.path.isfile(os.path.join(summary["models"], "1", "model_card.md"))
    assert "held-out" in json.dumps(card).lower()
    # Calibrated at export, and the report shows calibration and explanation overlays.
    meta = json.load(open(os.path.join(summary["models"], "1", "assets", "metadata.json")))
    assert meta["calibration"]["split"] == "validation" and meta["calibration"]["temperature"] > 0
    report = open(os.path.join(summary["report"], "report.md")).read()
    assert "## Calibration" in report and "## Explanations (Grad-CAM)" in report
    assert os.path.exists(os.path.join(summary["report"], "reliability.png"))
    overlays = [f for f in os.listdir(os.path.join(summary["report"], "explain"))
                if f.endswith(".png")]
    assert overlays and all(f"explain/{f}" in report for f in overlays)
    assert 0 <= summary["metrics"]["calibration"]["case"]["ece"] <= 1
    # The held-out retrieval report: both encoders on the same queries, beside chance.
    assert "Same-lesion retrieval" in r.stdout and "last logged contrastive loss" in r.stdout
    ret = summary["retrieval"]
    assert ret["queries"] > 0 and ret["lesions"] >= 5
    assert ret["micle"]["queries"] == ret["random_init"]["queries"] == ret["chance"]["queries"]
    assert 0 < ret["chance"]["map"] < 1 and 0 <= ret["micle"]["map"] <= 1
    # Even the quick run's 20 steps learn: its loss ends below a uniform guess over the
    # 2B - 1 candidates, and its encoder retrieves held-out lesions better than random init.
    pt = summary["pretraining"]
    assert 0 < pt["final_contrast_loss"] < pt["uniform_guess_loss"] - 0.5
    assert ret["micle"]["map"] > ret["random_init"]["map"]


@pytest.mark.slow
def test_demo_on_a_ham10000_folder(ham_slice, tmp_path):
    """`python -m tfmicle.demo --ham10000 DIR --quick`, piped to a file as a user would:
    every stage runs on the real layout, the summary says what pretraining bought and
    how to serve the model, the sample photo is a JPEG the server takes, and no log line
    is a progress-bar dump."""
    import pathlib
    import tempfile
    # a short folder: the 300-character rule is about progress bars, not tmp path depth
    out = pathlib.Path(tempfile.mkdtemp(prefix="hamdemo")) / "demo"
    log = tmp_path / "demo.log"
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "tfmicle.demo", "--ham10000", ham_slice,
                                "--quick", "--out", str(out)], cwd=ROOT, stdout=f,
                               stderr=subprocess.STDOUT, timeout=1200)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "What pretraining bought" in text and "linear probe" in text
    assert f"--model-base-path {out / 'models' / 'ham10000'}" in text
    assert (out / "sample.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    report = (out / "score" / "report.md").read_text()
    for column in ("sex", "age_band", "localization"):
        assert column in report
    long_lines = [line for line in text.splitlines() if len(line) > 300]
    assert not long_lines, long_lines[0][:200]
    assert "\r" not in text and "\x1b[" not in text
    summary = json.load(open(out / "summary.json"))
    assert summary["bought"]["micle"]["queries"] == summary["bought"]["queries"] > 0
    # the served version carries its index of training lesions (found, hot-reloaded with
    # it), and the report scored the test lesions' nearest ones
    index = json.load(open(out / "models" / "ham10000" / "1" / "similar" / "index.json"))
    assert index["count"] > 0
    sim = json.load(open(out / "score" / "metrics.json"))["similar_cases"]
    assert sim["queries"] > 0 and 0 <= sim["precision_at_k"] <= 1
    assert "classify?similar=5" in text and (out / "score" / "model_card.md").is_file()
    # balanced class weights n / (K n_k) over the classes present, from the run's counts
    import numpy as np
    from tfmicle.data import records
    info = json.load(open(os.path.join(summary["finetune_dir"], "finetune.json")))
    counts = info["train_images_per_class"]
    present = sum(1 for c in counts if c)
    np.testing.assert_allclose(info["class_weights"],
                               [sum(counts) / (present * c) if c else 0 for c in counts])
    # every test photo scored
    test_images = records.load_dataset_info(summary["records"])["splits"]["test"]["images"]
    with open(out / "score" / "predictions_images.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == test_images
    import shutil
    shutil.rmtree(out.parent, ignore_errors=True)
