"""The demo's quick mode, run as a user runs it, leaves every promised artefact."""
import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ph2_manifest_groups_patches_by_lesion(tmp_path):
    from tfmicle.demo import ph2_patch_dir, write_manifest
    counts = write_manifest(ph2_patch_dir(), str(tmp_path / "m.csv"))
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert len(rows) == counts["images"] and counts["lesions"] >= 190
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
