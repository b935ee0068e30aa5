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
from experiments import label_efficiency_report as ler  # noqa: E402

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
    # The defaults: a 1,000-image validation split and a 2,000-image labeled pool.
    a = le.parse_args([])
    is_val, is_pool = le.carve_pool(data["train"][1], a.labeled_pool, a.validation_size, 0)
    assert is_val.sum() == 1000 and is_pool.sum() == 2000 and not np.any(is_val & is_pool)
    assert np.bincount(data["train"][1][is_val]).tolist() == [100] * 10
    assert np.bincount(data["train"][1][is_pool]).tolist() == [200] * 10


def test_stratified_head():
    labels = np.repeat(np.arange(4), 10)
    idx = le.stratified_head(labels, 8, seed=3)
    assert len(idx) == 8 and np.bincount(labels[idx]).tolist() == [2, 2, 2, 2]
    assert np.array_equal(le.stratified_head(labels, 0, seed=3), np.arange(40))


def test_labeled_pool_and_validation_carving():
    labels = np.repeat(np.arange(10), 100)[np.random.default_rng(5).permutation(1000)]
    is_val, is_pool = le.carve_pool(labels, 200, 100, seed=0)
    assert is_val.dtype == bool and is_pool.dtype == bool and len(is_val) == len(labels)
    assert is_val.sum() == 100 and is_pool.sum() == 200           # sizes
    assert not np.any(is_val & is_pool)                            # disjoint
    assert np.bincount(labels[is_val]).tolist() == [10] * 10       # stratified
    assert np.bincount(labels[is_pool]).tolist() == [20] * 10
    # Seeded and deterministic; validation does not depend on the pool size; pools of
    # one seed are nested across sizes (so are data_prep's label subsets of a pool).
    v2, p2 = le.carve_pool(labels, 200, 100, seed=0)
    assert np.array_equal(v2, is_val) and np.array_equal(p2, is_pool)
    assert np.array_equal(is_val, le.carve_validation(labels, 100, 0))
    v3, small = le.carve_pool(labels, 50, 100, seed=0)
    assert np.array_equal(v3, is_val) and small.sum() == 50 and np.all(is_pool[small])
    assert not np.array_equal(le.carve_pool(labels, 200, 100, seed=1)[1], is_pool)
    # Pool 0: every training image that is not validation.
    _, everything = le.carve_pool(labels, 0, 100, seed=0)
    assert np.array_equal(everything, ~is_val)


def test_label_manifests_pool_validation_test(tmp_path):
    train = (np.zeros((12, 2, 2), np.uint8), np.arange(12) % 3)
    test = (np.zeros((4, 2, 2), np.uint8), np.arange(4) % 3)
    data = {"train": train, "test": test}
    train_idx, test_idx = np.arange(2, 12), np.arange(4)
    rels = {"train": [f"train/{i:05d}.png" for i in train_idx],
            "test": [f"test/{i:05d}.png" for i in test_idx]}
    is_val = np.zeros(10, bool)
    is_val[[0, 1, 2]] = True
    is_pool = np.zeros(10, bool)
    is_pool[[3, 4, 5, 6]] = True
    labeled, unlabeled = le.write_manifests(str(tmp_path), data, rels, train_idx, test_idx,
                                            is_val, is_pool)
    rows = list(csv.DictReader(open(labeled)))
    by_split = {}
    for r in rows:
        by_split.setdefault(r["split"], []).append(r["image"])
    assert by_split == {"validation": rels["train"][:3], "train": rels["train"][3:7],
                        "test": rels["test"]}
    assert rows[0]["label"] == le.CLASS_NAMES[train[1][2]]
    # Every training image is unlabeled data for pretraining, pool and validation included.
    assert [r["image"] for r in csv.DictReader(open(unlabeled))] == rels["train"]
    assert list(csv.DictReader(open(unlabeled)))[0].keys() == {"image"}
    with pytest.raises(ValueError):
        le.write_manifests(str(tmp_path), data, rels, train_idx, test_idx, is_val, is_val)


def _label_row(seed, init, fraction, lr, val, best_step, test=None, steps=60, n=200):
    curve = [[s, 0.5] for s in range(10, steps + 1, 10)]
    curve[[s for s, _ in curve].index(best_step)][1] = val
    row = {"seed": seed, "init": init, "fraction": fraction, "learning_rate": lr,
           "labeled_images": n, "budget_steps": steps, "steps": steps,
           "epochs": steps * 64 / n, "validation_curve": curve,
           "best_validation": {"metric": "val_accuracy", "value": val, "step": best_step}}
    row["best_at_last_validation"] = le.best_at_last_validation(row)
    if test is not None:
        row.update(test_accuracy=test, test_images=1000)
    return row


def test_label_lr_choice_best_step_flag_and_verdict():
    grid = [_label_row(0, "scratch", 0.1, 0.02, 0.70, 30),
            _label_row(0, "scratch", 0.1, 0.1, 0.74, 60),
            _label_row(0, "simclr", 0.1, 0.02, 0.80, 20),
            _label_row(0, "simclr", 0.1, 0.1, 0.80, 40)]
    assert le.choose_lr(grid, "scratch", 0.1) == 0.1
    assert le.choose_lr(grid, "simclr", 0.1) == 0.02        # a tie: the first in the grid
    with pytest.raises(ValueError):
        le.choose_lr(grid, "scratch", 1.0)
    assert [r["best_at_last_validation"] for r in grid] == [False, True, False, False]
    assert le.eval_every(600, 6) == 100 and le.eval_every(200, 6) == 34
    assert le.eval_every(5, 6) == 1

    def rows(simclr_lo, scratch_hi):
        out = []
        for seed, (a, b) in enumerate(zip(simclr_lo, scratch_hi)):
            out += [_label_row(seed, "simclr", 0.1, 0.02, 0.8, 30, a),
                    _label_row(seed, "scratch", 0.1, 0.1, 0.7, 30, 0.70),
                    _label_row(seed, "simclr", 1.0, 0.02, 0.9, 30, 0.90, n=2000),
                    _label_row(seed, "scratch", 1.0, 0.1, 0.8, 30, b, n=2000)]
        return out

    s = le.summarise(rows([0.84, 0.85, 0.86], [0.80, 0.81, 0.82]), [0.1, 1.0])
    assert s["simclr"]["0.1"]["test_accuracy"]["mean"] == pytest.approx(0.85)
    assert s["simclr"]["0.1"]["test_accuracy"]["std"] == pytest.approx(0.01)
    assert s["scratch"]["1"]["labeled_images"] == 2000 and s["scratch"]["1"]["steps"] == 60
    assert s["scratch"]["0.1"]["learning_rate"] == 0.1
    assert s["scratch"]["1"]["best_steps"] == [30, 30, 30]
    v = le.verdict(s, [0.1, 1.0])
    assert v["reaches"] and v["difference_exceeds_std"]
    assert v["difference"] == pytest.approx(0.04)
    assert v["text"].startswith("Yes: SimCLR + 10% labels (200 images) reaches scratch + "
                                "100% labels (2,000 images)")
    v = le.verdict(le.summarise(rows([0.80, 0.81, 0.82], [0.84, 0.85, 0.86]), [0.1, 1.0]),
                   [0.1, 1.0])
    assert not v["reaches"] and v["difference_exceeds_std"]
    assert v["text"].startswith("No: ") and "does not reach" in v["text"]
    v = le.verdict(le.summarise(rows([0.80, 0.84, 0.82], [0.81, 0.83, 0.82]), [0.1, 1.0]),
                   [0.1, 1.0])
    assert v["reaches"] and not v["difference_exceeds_std"]
    assert "within the seed spread" in v["text"] and "not clearly" in v["text"]
    v = le.verdict(le.summarise(rows([0.80], [0.84]), [0.1, 1.0]), [0.1, 1.0])
    assert not v["reaches"] and v["seeds"] == 1 and "one seed" in v["text"]


def test_label_markdown_reports_grid_seeds_and_flags():
    runs = []
    for seed in (0, 1, 2):
        for init in le.INITS:
            runs.append(_label_row(seed, init, 0.1, 0.1, 0.75, 30, 0.74 + 0.01 * seed))
            runs.append(_label_row(seed, init, 1.0, 0.02, 0.85, 60 if seed == 2 else 30,
                                   0.84 + 0.01 * seed, n=2000))
    grid = [dict(r, chosen=True) for r in runs if r["seed"] == 0]
    grid += [dict(_label_row(0, i, f, 0.02 if f < 1 else 0.1, 0.6, 60, n=n), chosen=False)
             for i in le.INITS for f, n in ((0.1, 200), (1.0, 2000))]
    summary = le.summarise(runs, [0.1, 1.0])
    flagged = [ler.run_name(r) for r in grid + [r for r in runs if r["seed"] != 0]
               if r["best_at_last_validation"]]
    result = {
        "settings": {"seeds": [0, 1, 2], "fractions": [0.1, 1.0], "finetune_steps": [60, 60],
                     "lr_grid": [0.02, 0.1], "validations": 6, "pretrain_per_seed": False,
                     "pretrain_steps": 1000, "batch_size": 64, "depth": 18, "width": 0.25,
                     "image_size": 28},
        "data": {"train_images": 2000, "unlabeled_images": 60000, "validation_images": 1000,
                 "test_images": 10000},
        "pretraining": [{"seed": 0, "steps": 1000, "final_loss": 4.2, "seconds": 400}],
        "grid": grid, "runs": runs, "summary": summary, "not_converged": flagged,
        "verdict": le.verdict(summary, [0.1, 1.0]), "wall_seconds": 60, "command": "x"}
    md = le.markdown(result)
    assert result["verdict"]["text"] in md
    assert "| SimCLR-pretrained |" in md and "| from scratch |" in md
    assert "mean ± std (ddof 1) over 3 seeds" in md
    assert "grid {0.02, 0.1}" in md and md.count("| rejected |") == 4
    assert md.count("| **chosen** |") == 4
    assert "one SimCLR pretraining run (seed 0) shared by every seed" in md
    # 8 grid runs + 8 more seeds' runs; flagged: the 4 rejected grid runs and the two
    # seed-2 runs at 100 % (best at step 60 of 60).
    assert len(flagged) == 6 and "6 of the 16 runs" in md
    assert "seed 2, from scratch, 100% labels, LR 0.02" in md
    assert "2,000 training images" in md and "60,000 training images" in md


def test_label_efficiency_new_flags():
    a = le.parse_args([])
    assert (a.seeds, a.fractions, a.finetune_steps) == ([0, 1, 2], [0.1, 1.0], [200, 600])
    assert (a.labeled_pool, a.validation_size, a.lr_grid) == (2000, 1000, [0.02, 0.1])
    assert a.validations == 6 and a.pretrain_steps == 1000 and not a.pretrain_per_seed
    a = le.parse_args(["--lr-grid", "0.1,0.05,0.1", "--labeled-pool", "0",
                       "--pretrain-per-seed", "--finetune-steps", "50"])
    assert a.lr_grid == [0.1, 0.05] and a.labeled_pool == 0 and a.pretrain_per_seed
    assert a.finetune_steps == [50, 50]
    for bad in (["--lr-grid", "0"], ["--validation-size", "5"], ["--labeled-pool", "-1"],
                ["--fractions", "0.01,0.1,1"], ["--validations", "0"], ["--seeds", "1,1"]):
        with pytest.raises(SystemExit) as e:
            le.parse_args(bad)
        assert e.value.code == 2, bad


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
    # Case-level SimCLR (the default on case-grouped data): both methods see one example
    # per lesion per epoch, and no batch holds a lesion twice.
    for m in ("micle", "simclr"):
        assert seed["pretraining"][m]["example"] == "case"
        assert seed["pretraining"][m]["same_case_pairs"] == 0
    md = open(os.path.join(out, "results.md")).read()
    assert "| MICLe |" in md and "| SimCLR |" in md and "| chance |" in md and "mAP" in md


@pytest.mark.slow
def test_choose_derm_settings_quick(tmp_path):
    """The validation search: it never reads Experiment 1's held-out lesions of its seed,
    scores every trial for both methods and picks the best by the declared score."""
    from experiments import choose_derm_settings as cds
    out = str(tmp_path / "search")
    p = _run("choose_derm_settings.py", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = _check_files(out)
    assert set(r["trials"]) == set(cds.QUICK_CANDIDATES)
    best = max(r["trials"], key=lambda n: cds.score(r["trials"][n][0]))
    assert r["chosen"] == best and r["chosen_overrides"] == cds.CANDIDATES[best]
    for trial in r["trials"].values():
        for m in ("micle", "simclr", "random_init"):
            assert 0.0 <= trial[0][m]["map"] <= 1.0
        # 25 % of the 119 pretraining lesions are validation lesions, 10 "a" queries each
        # (those left with no same-lesion candidate after the leakage filter are skipped).
        q = trial[0]["micle"]["queries"]
        assert 0.9 * 10 * 30 <= q <= 10 * 30
        assert trial[0]["simclr"]["queries"] == trial[0]["random_init"]["queries"] == q
    md = open(os.path.join(out, "results.md")).read()
    assert "**Chosen:**" in md and "| no_colour_jitter |" in md


@pytest.mark.slow
def test_label_efficiency_quick(tmp_path):
    if not os.path.isfile(os.path.join(le.FASHION_DIR, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("dataset-fashion-mnist is not installed (setup.sh installs it)")
    out = str(tmp_path / "e2")
    p = _run("label_efficiency.py", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = _check_files(out)
    assert r["experiment"] == "label_efficiency"
    st = r["settings"]
    fr = st["fractions"]
    assert fr == [0.1, 1.0]
    d = r["data"]
    assert d["test_images"] == st["test_limit"] == 500
    assert d["unlabeled_images"] == st["train_limit"] == 1500
    # The labeled pool and validation are disjoint parts of the 1,500 training images.
    assert d["train_images"] == st["labeled_pool"] == 300
    assert d["validation_images"] == st["validation_size"] == 200
    subsets = d["label_subsets"]
    counts = [subsets[f"{f:g}"]["cases"] for f in fr]
    assert counts[0] < counts[1] == d["train_images"]
    seeds = st["seeds"]
    assert len(r["runs"]) == 2 * len(fr) * len(seeds)
    assert len(r["grid"]) == 2 * len(fr) * len(st["lr_grid"])
    for run in r["runs"]:
        assert run["test_images"] == 500 and 0.0 <= run["test_accuracy"] <= 1.0
        assert run["best_validation"]["metric"] == "val_accuracy"
        assert run["learning_rate"] == r["chosen_learning_rates"][
            f"{run['init']} {run['fraction']:g}"]
        steps = [s for s, _ in run["validation_curve"]]
        assert run["best_validation"]["step"] in steps and steps[-1] == run["steps"]
    for g in r["grid"]:
        assert g["seed"] == seeds[0] and "test_accuracy" not in g    # test: final runs only
    assert sum(g["chosen"] for g in r["grid"]) == 2 * len(fr)
    for init in le.INITS:
        for f in fr:
            s = r["summary"][init][f"{f:g}"]
            assert 0.0 <= s["test_accuracy"]["mean"] <= 1.0
            assert s["labeled_images"] == subsets[f"{f:g}"]["cases"]
    assert r["verdict"]["simclr_fraction"] == 0.1 and r["verdict"]["scratch_fraction"] == 1.0
    assert len(r["pretraining"]) == 1 and r["pretraining"][0]["seed"] == seeds[0]
    assert r["pretrain_config"]["model"]["online_probe"] is False
    assert r["pretrain_config"]["data"]["train_split"] == "unlabeled"
    md = open(os.path.join(out, "results.md")).read()
    assert "| SimCLR-pretrained |" in md and "| from scratch |" in md
    assert r["verdict"]["text"] in md and "| **chosen** |" in md


@pytest.mark.slow
def test_experiment_bad_override_exits_2(tmp_path):
    p = _run("micle_vs_simclr.py", str(tmp_path / "x"), "--set", "train.nope=1", timeout=120)
    assert p.returncode == 2 and "unknown config key" in p.stderr


# --------------------------------------------------------------------------- HAM10000 (slow)

@pytest.mark.slow
def test_ham10000_experiments_quick(ham_slice, tmp_path):
    """Experiment 1 then Experiment 2 on the HAM10000 slice, as documented: the second
    reuses the first's pretraining runs (--pretrained OUT/work)."""
    out1 = str(tmp_path / "e1")
    p = _run("micle_vs_simclr.py", out1, "--dataset", "ham10000", "--data", ham_slice,
             "--keep-work")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.load(open(os.path.join(out1, "results.json")))
    assert r["experiment"] == "micle_vs_simclr_ham10000"
    ret = r["retrieval"]
    assert set(ret["summary"]) == {"micle", "simclr", "random_init", "colour_stats", "chance"}
    assert ret["queries"] > 0 and ret["lesions"] > 0
    for m, v in ret["summary"].items():
        assert v["map_ci"][0] <= v["map"] + 1e-9 and v["map"] <= v["map_ci"][1] + 1e-9, m
    for m in ("micle", "simclr", "random_init", "colour_stats"):
        pr = r["probe"][m]
        assert 0 <= pr["balanced_accuracy"]["mean"] <= 1 and 0 <= pr["macro_auc"]["mean"] <= 1
        assert len(pr["recall"]) == 7
    assert r["near_duplicates"]["applied"] > 0
    md = open(os.path.join(out1, "results.md")).read()
    assert "Retrieval of distinct photos" in md and "Linear probe" in md
    assert open(os.path.join(out1, "results.png"), "rb").read(8) == PNG_MAGIC
    for m in ("micle", "simclr"):
        assert os.path.isdir(os.path.join(out1, "work", "seed0", m, "checkpoints"))

    out2 = str(tmp_path / "e2")
    p = _run("label_efficiency.py", out2, "--dataset", "ham10000", "--data", ham_slice,
             "--pretrained", os.path.join(out1, "work"), timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r2 = _check_files(out2)
    assert set(r2["summary"]["arms"]) == {f"{i}/{f}" for i in ("micle", "simclr", "scratch")
                                          for f in ("0.1", "1")}
    # every arm tried each LR with balanced class weights, then none at its best LR
    assert len(r2["grid"]) == 6 * (len(r2["settings"]["lr_grid"]) + 1)
    for key, c in r2["chosen"].items():
        init, f = key.split("/")
        rows = [g for g in r2["grid"] if g["init"] == init and f"{g['fraction']:g}" == f]
        best = max(rows, key=lambda g: -1.0 if g["score"] is None else g["score"])
        assert (c["learning_rate"], c["class_weight"]) == (best["learning_rate"],
                                                           best["class_weight"])
        for g in rows:
            if g["score"] is not None:        # None: the slice's validation lacks classes
                assert g["score"] == pytest.approx((g["val_macro_auc"] +
                                                    g["val_balanced_accuracy"]) / 2)
    md = open(os.path.join(out2, "results.md")).read()
    assert "supervised + 100 %" in md


@pytest.mark.slow
def test_ham10000_settings_search_quick(ham_slice, tmp_path):
    out = str(tmp_path / "search")
    p = _run("choose_derm_settings.py", out, "--dataset", "ham10000", "--data", ham_slice,
             "--candidates", "derm_ph2,crop25")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = _check_files(out)
    assert [t["name"] for t in r["trials"]] == ["derm_ph2", "crop25"]
    for t in r["trials"]:
        s = t["retrieval"]["summary"]
        assert t["score"] == pytest.approx((s["micle"]["map"] + s["simclr"]["map"]) / 2)
    assert r["chosen"] == max(r["trials"], key=lambda t: t["score"])["name"]
