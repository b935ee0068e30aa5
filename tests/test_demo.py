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


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "tfmicle.demo", "--quick", "-q", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tfmicle demo done" in r.stdout
    summary = json.load(open(out / "summary.json"))
    assert os.path.exists(os.path.join(summary["models"], "1", "saved_model.pb"))
    assert os.path.exists(os.path.join(summary["records"], "dataset.json"))
    assert os.path.exists(os.path.join(summary["report"], "report.md"))
    assert summary["metrics"], "score wrote no metrics.json"
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
