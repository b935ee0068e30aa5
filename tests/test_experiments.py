"""The two experiments: their data helpers (fast) and their --quick runs end to end
(slow: a subprocess each, checking the structure of results.json / .md / .png)."""
from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments import common, label_efficiency as le, micle_vs_simclr as mvs  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- helpers (fast)

def test_mean_std_and_formatting():
    s = common.mean_std([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert common.fmt_pm(s) == "0.600 ± 0.100"
    one = common.mean_std([0.25])
    assert one["std"] == 0.0 and common.fmt_pm(one) == "0.250"
    assert common.mean_std([float("nan")])["n"] == 0


def test_ph2_patches_as_documented():
    patches, counts = mvs.load_patches(mvs.patches_root())
    assert counts["a"] == 1990 and counts["lesions"] == 199
    assert counts["similar_b_too_small"] == 5
    assert counts["similar_b"] == 995 - 5 and counts["patches"] == len(patches)
    assert all(p.pixels.shape == (32, 32, 3) and p.pixels.dtype == np.uint8 for p in patches)
    assert all(p.kind == "a" or p.rel.startswith("Similar/") for p in patches)
    assert {p.lesion for p in patches} == set(range(199))


def test_lesion_split_is_disjoint_seeded_and_changes_with_the_seed(tmp_path):
    lesions = list(range(199))
    train, held = mvs.split_lesions(lesions, 0.4, seed=0)
    assert len(held) == 80 and len(train) == 119
    assert not set(train) & set(held) and set(train) | set(held) == set(lesions)
    assert mvs.split_lesions(lesions, 0.4, seed=0) == (train, held)
    assert mvs.split_lesions(lesions, 0.4, seed=1)[1] != held
    px = np.zeros((32, 32, 3), np.uint8)
    patches = [mvs.Patch(k, kind, f"Similar/patch{k}{kind}.bmp", px)
               for k in (5, 17) for kind in "ab"]
    path = tmp_path / "m.csv"
    mvs.write_manifest(str(path), patches, heldout={1})
    rows = list(csv.DictReader(open(path)))
    assert [(r["case_id"], r["split"]) for r in rows] == [
        ("lesion000", "train"), ("lesion000", "train"),
        ("lesion001", "heldout"), ("lesion001", "heldout")]


def _write_idx(path, array: np.ndarray, code: int):
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def test_read_idx_round_trip_and_errors(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "i.gz", images, 0x08)
    assert np.array_equal(le.read_idx(str(tmp_path / "i.gz")), images)
    ints = np.array([1, -2, 70000], np.int32)
    _write_idx(tmp_path / "n.gz", ints, 0x0C)
    assert le.read_idx(str(tmp_path / "n.gz")).tolist() == [1, -2, 70000]
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError):
        le.read_idx(str(tmp_path / "bad.gz"))


def test_fashion_mnist_files_and_validation_carving():
    if not os.path.isfile(os.path.join(le.FASHION_DIR, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("dataset-fashion-mnist is not installed (setup.sh installs it)")
    data = le.load_fashion_mnist(le.FASHION_DIR)
    assert data["train"][0].shape == (60000, 28, 28) and data["test"][0].shape == (10000, 28, 28)
    assert np.bincount(data["train"][1]).tolist() == [6000] * 10
    val = le.carve_validation(data["train"][1], 5000, 0)
    assert val.sum() == 5000
    assert np.bincount(data["train"][1][val]).tolist() == [500] * 10
    assert np.array_equal(val, le.carve_validation(data["train"][1], 5000, 0))


def test_stratified_head():
    labels = np.repeat(np.arange(4), 10)
    idx = le.stratified_head(labels, 8, seed=3)
    assert len(idx) == 8 and np.bincount(labels[idx]).tolist() == [2, 2, 2, 2]
    assert np.array_equal(le.stratified_head(labels, 0, seed=3), np.arange(40))


def test_bad_flags_exit_2():
    with pytest.raises(SystemExit) as e:
        le.parse_args(["--fractions", "0.1,1", "--finetune-steps", "1,2,3"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        mvs.parse_args(["--steps", "0"])
    assert e.value.code == 2
    a = le.parse_args(["--quick", "--fractions", "1,0.1", "--finetune-steps", "7,3"])
    assert a.fractions == [0.1, 1.0] and a.finetune_steps == [3, 7]


# --------------------------------------------------------------------------- --quick runs (slow)

def _run(script: str, out: str, *extra: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(REPO, "experiments", script),
                           "--quick", "--out", out, "--verbose", "0", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _check_files(out: str) -> dict:
    assert sorted(f for f in os.listdir(out)) == ["results.json", "results.md", "results.png"]
    with open(os.path.join(out, "results.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_micle_vs_simclr_quick(tmp_path):
    out = str(tmp_path / "e1")
    p = _run("micle_vs_simclr.py", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = _check_files(out)
    assert r["experiment"] == "micle_vs_simclr" and r["settings"]["quick"] is True
    assert len(r["per_seed"]) == len(r["settings"]["seeds"]) >= 1
    for m in mvs.METHODS:
        for variant in ("filtered", "unfiltered"):
            for key in ("top1", "map"):
                s = r["summary"][m][variant][key]
                assert 0.0 <= s["mean"] <= 1.0 and s["n"] == len(r["per_seed"])
    seed = r["per_seed"][0]
    ev = seed["eval"]
    assert ev["heldout_lesions"] == len(seed["heldout_lesions"]) == 80
    assert ev["queries"] == 10 * 80          # the 10 "a" patches of each held-out lesion
    assert ev["heldout_patches"] > ev["queries"]
    # Every method is scored on the same queries and candidates as chance.
    chance = ev["methods"]["chance"]["filtered"]
    for m in mvs.METHODS:
        f = ev["methods"][m]["filtered"]
        assert f["queries"] == chance["queries"] > 0
        assert f["mean_candidates"] == chance["mean_candidates"]
    # The filter removes candidates (shifted twins, overlaps) and chance is low.
    assert chance["mean_candidates"] < ev["methods"]["chance"]["unfiltered"]["mean_candidates"]
    assert chance["top1"] < 0.05
    assert seed["records"]["heldout"]["cases"] == 80
    assert seed["records"]["train"]["cases"] == 119
    for m in ("micle", "simclr"):
        assert seed["pretraining"][m]["steps"] == r["settings"]["steps"]
    assert seed["pretraining"]["micle"]["example"] == "case"
    assert seed["pretraining"]["simclr"]["example"] == "image"
    md = open(os.path.join(out, "results.md")).read()
    assert "| MICLe |" in md and "| SimCLR |" in md and "| chance |" in md and "mAP" in md


@pytest.mark.slow
def test_label_efficiency_quick(tmp_path):
    if not os.path.isfile(os.path.join(le.FASHION_DIR, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("dataset-fashion-mnist is not installed (setup.sh installs it)")
    out = str(tmp_path / "e2")
    p = _run("label_efficiency.py", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = _check_files(out)
    assert r["experiment"] == "label_efficiency"
    fr = r["settings"]["fractions"]
    assert fr == [0.01, 0.1, 1.0]
    d = r["data"]
    assert d["test_images"] == r["settings"]["test_limit"] == 500
    assert d["unlabeled_images"] == r["settings"]["train_limit"] == 1500
    assert d["train_images"] + d["validation_images"] == 1500
    subsets = d["label_subsets"]
    counts = [subsets[f"{f:g}"]["cases"] for f in fr]
    assert counts[0] < counts[1] < counts[2] == d["train_images"]
    assert len(r["runs"]) == 2 * len(fr) * len(r["settings"]["seeds"])
    for run in r["runs"]:
        assert run["test_images"] == 500 and 0.0 <= run["test_accuracy"] <= 1.0
        assert run["best_validation"]["metric"] == "val_accuracy"
    for init in le.INITS:
        for f in fr:
            s = r["summary"][init][f"{f:g}"]
            assert 0.0 <= s["test_accuracy"]["mean"] <= 1.0
            assert s["labeled_images"] == subsets[f"{f:g}"]["cases"]
    assert r["pretrain_config"]["model"]["online_probe"] is False
    assert r["pretrain_config"]["data"]["train_split"] == "unlabeled"
    md = open(os.path.join(out, "results.md")).read()
    assert "| SimCLR-pretrained |" in md and "| from scratch |" in md


@pytest.mark.slow
def test_experiment_bad_override_exits_2(tmp_path):
    p = _run("micle_vs_simclr.py", str(tmp_path / "x"), "--set", "train.nope=1", timeout=120)
    assert p.returncode == 2 and "unknown config key" in p.stderr
