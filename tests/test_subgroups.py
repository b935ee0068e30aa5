"""Subgroup metrics and the distribution-shift summary: records schema v2
carries each dataset's patient metadata; the score report's subgroup tables, largest
gap and shift section equal what a plain numpy reference computes from the written
prediction files (filtered by their meta_ columns). v1 records stay readable.

End to end on the HAM10000, ISIC 2020 and CheXpert layouts of test_data_prep (data_prep
-> records -> score) with the serving package's mean-colour SavedModel as the tiny
exported model: it follows the serving contract, takes any class list and costs no
training, so each layout gets a model with its own classes.
"""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from data_prep.datasets import CHEXPERT_CLASSES
from tfmicle import metrics as M
from tfmicle import score as sc
from tfmicle.data import records
from tfmicle.model_format import write_metadata
from tfmicle.score import shift as S
from tfmicle.score import subgroups as G
from test_data_prep import HAM_CLASSES, make_chexpert, make_ham10000, run, write_csv, write_image

REPS = 100


# ----------------------------------------------------------------------------- references

def auc_ref(y, s) -> float:
    """ROC AUC by counting pairs (ties one half); NaN without both outcomes."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return math.nan
    return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def case_level(rows, classes, multilabel):
    """Case rows from image rows: mean probabilities, the first image's label."""
    cases = {}
    for r in rows:
        cases.setdefault(r["case_id"], []).append(r)
    probs = np.array([np.mean([[float(r[f"prob_{c}"]) for c in classes] for r in rs], axis=0)
                      for rs in cases.values()])
    if multilabel:
        lab = np.array([[float(rs[0][f"label_{c}"]) if rs[0][f"label_{c}"] else math.nan
                         for c in classes] for rs in cases.values()])
    else:
        lab = np.array([classes.index(rs[0]["label"]) for rs in cases.values()])
    return probs, lab, len(cases)


def metrics_ref(rows, classes, multilabel):
    probs, lab, n = case_level(rows, classes, multilabel)
    aucs = []
    for c in range(len(classes)):
        if multilabel:
            keep = (lab[:, c] == 0) | (lab[:, c] == 1)
            aucs.append(auc_ref(lab[keep, c] == 1, probs[keep, c]))
        else:
            aucs.append(auc_ref(lab == c, probs[:, c]))
    aucs = [a for a in aucs if not math.isnan(a)]
    out = {"num_cases": n, "mean_auc": float(np.mean(aucs)) if aucs else math.nan}
    if not multilabel:
        out["top1_accuracy"] = float(np.mean(probs.argmax(1) == lab))
    return out


def decade(text):
    try:
        a = float(text)
    except ValueError:
        return "unknown"
    return f"{int(a // 10) * 10}-{int(a // 10) * 10 + 9}"


def toy_model(path, classes, task="multiclass", seed=0):
    """The mean-colour SavedModel with large random weights (varied predictions)."""
    from serving.toy import save_mean_colour_model
    rng = np.random.default_rng(seed)
    vdir = save_mean_colour_model(path / "1", rng.normal(0, 40, (3, len(classes))),
                                  rng.normal(0, 1, len(classes)), classes, size=8)
    write_metadata(vdir, {"task": task, "class_names": classes})
    return str(path)


def check_subgroups(out, classes, want_groups, multilabel=False, min_cases=5):
    """metrics.json's subgroups equal the reference on predictions_images.csv filtered by
    each meta_ column; want_groups: {name: (column, value -> group)}; the largest gap is
    best minus worst known group of at least min_cases cases."""
    rows = read_rows(out / "predictions_images.csv")
    m = json.load(open(out / "metrics.json"))["subgroups"]
    for name, (col, to_group) in want_groups.items():
        assert m[name]["column"] == col
        by = {}
        for r in rows:
            by.setdefault(to_group(r["meta_" + col]), []).append(r)
        assert set(m[name]["groups"]) == set(by), name
        for g, grows in by.items():
            got, ref = m[name]["groups"][g], metrics_ref(grows, classes, multilabel)
            assert got["num_images"] == len(grows) and got["num_cases"] == ref["num_cases"]
            for k in ("mean_auc", "top1_accuracy"):
                if k in ref:
                    v = got["case"][k]
                    assert (v is None and math.isnan(ref[k])) or v == pytest.approx(ref[k]), \
                        (name, g, k)
        gap = m[name]["largest_gap"]
        refs = {g: metrics_ref(r, classes, multilabel) for g, r in by.items()
                if g != "unknown"}
        refs = {g: r for g, r in refs.items() if r["num_cases"] >= min_cases}
        key = next((k for k in ("mean_auc", "top1_accuracy")
                    if sum(k in r and not math.isnan(r[k]) for r in refs.values()) >= 2), None)
        assert (gap is None) == (key is None), name
        if gap:
            assert gap["metric"] == key
            vals = {g: r[key] for g, r in refs.items() if not math.isnan(r[key])}
            assert gap["difference"] == pytest.approx(max(vals.values()) - min(vals.values()))
            assert vals[gap["best"]] == max(vals.values())
            assert vals[gap["worst"]] == min(vals.values())
            lo, hi = gap["ci95"]
            assert lo <= hi
    return m


# ----------------------------------------------------------------------------- units

def test_age_bands_and_friendly_names():
    assert [G.age_band(t) for t in ("45", "45.0", "9", "80", "", "n/a")] == [
        "40-49", "40-49", "0-9", "80-89", "unknown", "unknown"]
    edges = G.parse_age_bands("0,40,60")
    assert [G.age_band(t, edges) for t in ("39.5", "40", "59", "60", "95", "-1")] == [
        "0-39", "40-59", "40-59", "60+", "60+", "<0"]
    for bad in ("60,40", "a,b", ","):
        with pytest.raises(sc.ScoreError):
            G.parse_age_bands(bad)
    assert G.resolve_column("site", ["sex", "age", "localization"]) == "localization"
    assert G.resolve_column("site", ["anatom_site_general_challenge"]) == \
        "anatom_site_general_challenge"
    assert G.resolve_column("age_band", ["Sex", "Age"]) == "Age"
    assert G.resolve_column("age", ["age_approx"]) == "age_approx"
    assert G.resolve_column("view", ["Frontal/Lateral"]) == "Frontal/Lateral"
    assert G.resolve_column("scanner", ["Scanner"]) == "Scanner"
    assert G.resolve_column("site", ["sex"]) is None
    assert G.parse_subgroups(" sex, age_band,,sex") == ["sex", "age_band"]


def test_difference_ci_matches_binomial_quantiles():
    """a: 40 cases always right; b: 20 cases, 10 right. The drop in accuracy over
    replicates is 1 - Binomial(20, 1/2) / 20, whose 2.5 / 97.5 % quantiles are
    1 - 14/20 and 1 - 6/20 (P(X <= 5) = 0.021 < 0.025 < P(X <= 6) = 0.058)."""
    hit_a, hit_b = np.ones(40), np.r_[np.ones(10), np.zeros(10)]
    ci = M.difference_ci(lambda r: {"acc": hit_a[r].mean()}, [np.array([i]) for i in range(40)],
                         lambda r: {"acc": hit_b[r].mean()}, [np.array([i]) for i in range(20)],
                         replicates=4000, seed=1)
    lo, hi = ci["acc"]
    assert lo == pytest.approx(0.30, abs=0.05) and hi == pytest.approx(0.70, abs=0.05)
    # Cases, not rows, are resampled: b as 2 cases of 10 identical rows each gives a
    # replicate accuracy of 0, 1/2 or 1 only, so the CI spans the whole range.
    ci = M.difference_ci(lambda r: {"acc": hit_a[r].mean()}, [np.array([i]) for i in range(40)],
                         lambda r: {"acc": hit_b[r].mean()}, [np.arange(10), np.arange(10, 20)],
                         replicates=400, seed=1)
    assert ci["acc"] == [0.0, 1.0]


def test_shift_summary_hand_built():
    """primary: 40 cases, all right with confidence 0.9; compare: 20 cases, 10 right,
    confidence 0.6. Drop in top-1 accuracy 0.5 with the binomial CI above; ECE 0.1 and
    |0.5 - 0.6| = 0.1; prevalence counted by hand."""
    classes = ["a", "b"]
    lab_p = np.array([0, 1] * 20)
    probs_p = np.where(np.eye(2)[lab_p] == 1, 0.9, 0.1)
    lab_c = np.array([0] * 15 + [1] * 5)
    pred_c = np.r_[np.zeros(10, int), np.ones(5, int), np.zeros(5, int)]  # 10 right
    probs_c = np.where(np.eye(2)[pred_c] == 1, 0.6, 0.4)
    s = S.shift_summary("multiclass", classes, (probs_p, lab_p, [f"p{i}" for i in range(40)]),
                        (probs_c, lab_c, [f"c{i}" for i in range(20)]), replicates=2000, seed=1)
    top1 = s["metrics"]["top1_accuracy"]
    assert top1["primary"] == 1.0 and top1["compare"] == 0.5 and top1["drop"] == 0.5
    assert top1["ci95"][0] == pytest.approx(0.30, abs=0.05)
    assert top1["ci95"][1] == pytest.approx(0.70, abs=0.05)
    assert top1["exceeds_ci"] is True
    assert "larger than the bootstrap uncertainty" in S.sentence("top-1 accuracy", top1)
    assert s["ece"]["primary"]["ece"] == pytest.approx(0.1)
    assert s["ece"]["compare"]["ece"] == pytest.approx(0.1)
    assert s["prevalence"]["primary"]["classes"] == {"a": 0.5, "b": 0.5}
    assert s["prevalence"]["compare"] == {"labelled_cases": 20, "classes": {"a": 0.75, "b": 0.25}}
    # The same set on both sides: no drop, and the CI includes 0.
    same = S.shift_summary("multiclass", classes, (probs_c, lab_c, list(range(20))),
                           (probs_c, lab_c, list(range(20))), replicates=500)
    m = same["metrics"]["top1_accuracy"]
    assert m["drop"] == 0 and m["ci95"][0] < 0 < m["ci95"][1] and m["exceeds_ci"] is False
    assert "within the bootstrap uncertainty" in S.sentence("top-1 accuracy", m)


def test_ece_hand_computed():
    # multi-class: confidences 0.9 (right), 0.92 (right) share bin 13; 0.8 (wrong) bin 12;
    # 0.7 (right) bin 10. ECE = 2/4*|1-0.91| + 1/4*|0-0.8| + 1/4*|1-0.7| = 0.32.
    probs = np.array([[0.9, 0.1], [0.08, 0.92], [0.8, 0.2], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    assert S.expected_calibration_error("multiclass", probs, labels)["ece"] == \
        pytest.approx(0.5 * 0.09 + 0.25 * 0.8 + 0.25 * 0.3)
    # multi-label: per class on definite labels only. Class 0: p 0.2 (y 0), 0.2 (y 1) ->
    # one bin, |0.5 - 0.2| = 0.3; class 1: p 1.0 (y 1), NaN / -1 left out -> 0.
    ml = S.expected_calibration_error(
        "multilabel", np.array([[0.2, 1.0], [0.2, 0.5], [0.9, 0.5]]),
        np.array([[0, 1], [1, -1], [math.nan, math.nan]]))
    assert ml["per_class"] == pytest.approx([0.3, 0.0]) and ml["ece"] == pytest.approx(0.15)


def test_v1_records_stay_readable(tmp_path):
    """Records as today's (v1) code writes them: no meta features, schema_version 1."""
    from conftest import synthetic_cases
    from data_prep.inspect_dataset import inspect_dataset
    from tfmicle.data.pipeline import PipelineConfig, image_examples
    d = tmp_path / "v1"
    d.mkdir()
    cases = synthetic_cases(4, 2)
    with tf.io.TFRecordWriter(str(d / records.shard_name("test", 0, 1))) as w:
        for c in cases:
            ex = records.encode_case(**c)
            del ex.features.feature[records.K_META_KEYS]
            del ex.features.feature[records.K_META]
            w.write(ex.SerializeToString())
    info = {"schema_version": 1, "task": "multiclass", "class_names": ["a", "b", "c"],
            "splits": {"test": {"cases": 4, "images": 8,
                                "shards": [records.shard_name("test", 0, 1)]}}}
    (d / records.DATASET_JSON).write_text(json.dumps(info))
    back = list(records.iter_cases(str(d), "test"))
    assert [c.meta for c in back] == [[]] * 4 and back[0].images == cases[0]["images"]
    assert records.read_image_metadata(str(d), "test") == (
        [], [(c["case_id"], i, {}) for c in cases for i in c["image_ids"]])
    n = sum(1 for _ in image_examples(PipelineConfig(str(d), "test"), 3))
    assert n == 8
    assert not inspect_dataset(str(d)).problems
    # schema v2 round trip of the same case with per-image metadata
    ex = records.encode_case(**cases[0], meta_keys=["sex", "Frontal/Lateral"],
                             meta=[["F", "Frontal"], ["F", "Lateral"]])
    parsed = records.parse_case(tf.constant(ex.SerializeToString()))
    assert parsed["meta"].numpy().tolist() == [[b"F", b"Frontal"], [b"F", b"Lateral"]]
    assert records.decode_case(ex.SerializeToString()).meta == [
        {"sex": "F", "Frontal/Lateral": "Frontal"}, {"sex": "F", "Frontal/Lateral": "Lateral"}]
    with pytest.raises(ValueError):
        records.encode_case(**cases[0], meta_keys=["sex"], meta=[["F"]])


# ----------------------------------------------------------------------------- end to end

def _ham(tmp_path):
    """The HAM10000 fixture with varied metadata per lesion (sex, age, site; one lesion
    without an age)."""
    root = tmp_path / "ham"
    rows, _, _ = make_ham10000(root, broken=False)
    sites = ["back", "face", "lower extremity"]
    for r in rows:
        lesion = int(r[0][4:])
        r[4] = "" if lesion == 5 else str(25 + 4 * lesion)
        r[5] = ["male", "female"][lesion % 2]
        r[6] = sites[lesion % 3]
    write_csv(root / "HAM10000_metadata.csv",
              ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"],
              rows)
    return root, rows


@pytest.mark.slow
def test_ham10000_subgroups_gap_and_shift_from_prediction_files(tmp_path, capsys):
    root, rows = _ham(tmp_path)
    info = run("ham10000", root, tmp_path / "rec", split_fractions={"test": 1.0})
    assert info["schema_version"] == 3 and info["metadata_columns"] == ["sex", "age",
                                                                         "localization"]
    model = toy_model(tmp_path / "models" / "ham", HAM_CLASSES)
    # compare: a CSV manifest of 16 of the images, its extra columns are metadata too
    manifest = tmp_path / "ext.csv"
    write_csv(manifest, ["image", "case_id", "label", "sex"],
              [[os.path.relpath(next(root.rglob(f"{r[1]}.jpg")), tmp_path), r[0], r[2], r[5]]
               for r in rows[:16]])
    out = tmp_path / "out"
    assert sc.main(["--model", model, "--data", str(tmp_path / "rec"), "--compare", str(manifest),
                    "--out", str(out), "--subgroups", "sex,age_band,site", "--bootstrap",
                    str(REPS), "-q"]) == 0
    capsys.readouterr()
    img = read_rows(out / "predictions_images.csv")
    by_id = {r[1]: r for r in rows}
    assert len(img) == len(rows)
    for r in img:   # the metadata columns carry the CSV's text
        src = by_id[r["image_id"]]
        assert (r["meta_age"], r["meta_sex"], r["meta_localization"]) == (src[4], src[5], src[6])
    m = check_subgroups(out, HAM_CLASSES, {
        "sex": ("sex", lambda v: v), "age_band": ("age", decade),
        "site": ("localization", lambda v: v)})
    assert m["sex"]["largest_gap"] is not None
    assert "unknown" in m["age_band"]["groups"]
    assert m["age_band"]["groups"]["unknown"]["num_cases"] == 1
    # the report flags the largest gap (over the attributes) at its top
    report = (out / "report.md").read_text()
    top = report.split("\n\n")[1]
    best = max((r["largest_gap"] for r in m.values() if r["largest_gap"]),
               key=lambda g: g["difference"])
    assert top.startswith("**Largest subgroup gap (primary):**")
    assert f"{best['difference']:.3f}" in top and best["best"] in top and best["worst"] in top
    assert "### site (column `localization`)" in report

    # the shift section: prevalence, drops, ECE, all from the two prediction files
    shift = json.load(open(out / "shift.json"))
    cmp_rows = read_rows(out / "compare" / "predictions_images.csv")
    assert {r["meta_sex"] for r in cmp_rows} == {"male", "female"}
    sets = {"primary": img, "compare": cmp_rows}
    for name, rs in sets.items():
        probs, lab, n = case_level(rs, HAM_CLASSES, False)
        counts = np.bincount(lab, minlength=7) / n
        assert shift["prevalence"][name]["classes"] == pytest.approx(
            dict(zip(HAM_CLASSES, counts)))
        conf, hit = probs.max(1), probs.argmax(1) == lab
        bins = np.minimum((conf * 15).astype(int), 14)
        ece = sum(np.sum(bins == b) / n * abs(hit[bins == b].mean() - conf[bins == b].mean())
                  for b in set(bins))
        assert shift["ece"][name]["ece"] == pytest.approx(ece)
    ref = {k: metrics_ref(rs, HAM_CLASSES, False) for k, rs in sets.items()}
    top1 = shift["metrics"]["top1_accuracy"]
    assert top1["drop"] == pytest.approx(ref["primary"]["top1_accuracy"]
                                         - ref["compare"]["top1_accuracy"])
    lo, hi = top1["ci95"]
    assert top1["exceeds_ci"] == (lo > 0 or hi < 0)
    assert "## Distribution shift" in report and S.sentence("top-1 accuracy", top1) in report


@pytest.mark.slow
def test_isic2020_subgroups(tmp_path):
    root = tmp_path / "isic20"
    rows = []
    sites = ["torso", "head/neck", "lower extremity", ""]
    for n in range(24):
        name, patient = f"ISIC_{n:07d}", f"IP_{n // 2:07d}"
        write_image(root / "jpeg" / "train" / f"{name}.jpg", n)
        t = int(n % 3 == 0)
        rows.append([name, patient, ["male", "female"][(n // 2) % 2], str(30.0 + 5 * (n // 2)),
                     sites[n % 4], "melanoma" if t else "nevus",
                     "malignant" if t else "benign", str(t)])
    write_csv(root / "train.csv", ["image_name", "patient_id", "sex", "age_approx",
                                   "anatom_site_general_challenge", "diagnosis",
                                   "benign_malignant", "target"], rows)
    run("isic2020", root, tmp_path / "rec", split_fractions={"test": 1.0})
    model = toy_model(tmp_path / "models" / "isic", ["benign", "malignant"], seed=3)
    out = tmp_path / "out"
    sc.score(model, str(tmp_path / "rec"), str(out), sc.ScoreOptions(
        replicates=REPS,
        subgroups=G.Subgroups(["sex", "age", "site"], G.parse_age_bands("0,40,60"))))
    bands = {"30.0": "0-39", "35.0": "0-39", "40.0": "40-59", "55.0": "40-59", "60.0": "60+",
             "85.0": "60+"}

    def band(v):
        return bands.get(v) or ("0-39" if float(v) < 40 else "40-59" if float(v) < 60 else "60+")
    m = check_subgroups(out, ["benign", "malignant"], {
        "sex": ("sex", lambda v: v), "age": ("age_approx", band),
        "site": ("anatom_site_general_challenge", lambda v: v or "unknown")})
    assert set(m["age"]["groups"]) == {"0-39", "40-59", "60+"}
    assert m["sex"]["largest_gap"] is not None
    assert set(m["site"]["groups"]) == {"torso", "head/neck", "lower extremity", "unknown"}
    # a patient with images on several sites is in several site groups (metadata per image)
    assert sum(g["num_cases"] for g in m["site"]["groups"].values()) > \
        json.load(open(out / "metrics.json"))["num_cases"]


@pytest.mark.slow
def test_chexpert_subgroups_multilabel(tmp_path, capsys):
    base, rows = make_chexpert(tmp_path)
    for split in ("train", "valid"):
        for i, r in enumerate(rows[split]):
            pat = int(r[0].split("/patient")[1][:5])
            r[1] = ["Female", "Male"][pat % 2]
            r[2] = str(30 + 9 * (pat % 5))
        write_csv(base / f"{split}.csv", ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
                  + CHEXPERT_CLASSES, rows[split])
    run("chexpert", base, tmp_path / "rec", split_fractions={"test": 1.0})
    model = toy_model(tmp_path / "models" / "cxr", CHEXPERT_CLASSES, "multilabel", seed=5)
    out = tmp_path / "out"
    assert sc.main(["--model", model, "--data", str(tmp_path / "rec"), "--out", str(out),
                    "--subgroups", "sex,age_band,view,projection", "--bootstrap", str(REPS),
                    "--subgroup-min-cases", "2", "-q"]) == 0
    m = check_subgroups(out, CHEXPERT_CLASSES, {
        "sex": ("Sex", lambda v: v), "age_band": ("Age", decade),
        "view": ("Frontal/Lateral", lambda v: v), "projection": ("AP/PA", lambda v: v or "unknown")},
        multilabel=True, min_cases=2)
    assert m["sex"]["largest_gap"] is not None
    assert set(m["view"]["groups"]) == {"Frontal", "Lateral"}
    assert m["projection"]["groups"]["unknown"]["num_images"] == \
        m["view"]["groups"]["Lateral"]["num_images"]
    capsys.readouterr()
    # a name the data has no column for is a one-line user error (exit 2)
    assert sc.main(["--model", model, "--data", str(tmp_path / "rec"), "--out", str(out),
                    "--subgroups", "site", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--subgroups site" in err[0] and "Frontal/Lateral" in err[0]


def test_csv_meta_cols_kept_per_image_and_missing_column_is_exit_2(tmp_path, capsys):
    from data_prep.__main__ import main
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.jpg", i)
    write_csv(tmp_path / "m.csv", ["image", "case_id", "label", "sex", "scanner"],
              [[f"img/{i}.jpg", f"c{i // 2}", "ab"[i // 2], "FM"[i % 2], f"s{i}"]
               for i in range(4)])
    base = ["--format", "csv", "--input", str(tmp_path / "m.csv"), "--no-progress",
            "--split-fractions", "test=1", "--workers", "1"]   # in this process
    assert main(base + ["--out", str(tmp_path / "out"), "--meta-cols", "scanner,sex"]) == 0
    info = records.load_dataset_info(str(tmp_path / "out"))
    assert info["metadata_columns"] == ["scanner", "sex"]
    got = {i: m for c in records.iter_cases(str(tmp_path / "out"), "test")
           for i, m in zip(c.image_ids, c.meta)}
    assert got == {f"img/{i}.jpg": {"scanner": f"s{i}", "sex": "FM"[i % 2]} for i in range(4)}
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "o2"), "--meta-cols", "sex,weight"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'weight'" in err[0]
