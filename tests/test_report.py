"""The score report without a model: hand-built predictions through the report, figure
and calibration code. Top-k rows, mean-AUC scope, confusion titles, image-level curves,
ECE levels, the subgroup flag, and --subgroups checked before the model loads. Fast."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import synthetic_cases, write_records
from tfmicle import metrics as M
from tfmicle import score as sc
from tfmicle.score import calib, figures, job, sections
from tfmicle.score.options import ScoreOptions
from tfmicle.score import report as R
from tfmicle.score import shift as S
from tfmicle.score import subgroups as G
from tfmicle.score.model import ScoringModel
from tfmicle.score.predict import Predictions
from tfmicle.score.source_files import CsvSource


def fake_model(classes, metadata=None) -> ScoringModel:
    return ScoringModel("models/x/1", 1, list(classes), "multiclass", 32, metadata or {}, None)


def fake_run(model, labels, case_ids, out_dir, name="primary", seed=0) -> R.Scored:
    """Noisy but informative probabilities for the labels, scored as job.score_one does."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    logits = rng.normal(0, 1, (len(labels), model.num_classes))
    logits[np.arange(len(labels)), labels] += 1.5
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    ids = [f"img{i}" for i in range(len(labels))]
    src = CsvSource("src", ids, ids, list(case_ids), labels, root=".")
    pred = Predictions(src, np.arange(len(labels)), probs, [])
    p64 = probs.astype(np.float64)
    m = M.evaluate(model.task, p64, labels, case_ids, model.class_names, None, 50, 0)
    m["calibration"] = calib.evaluate(model, p64, labels, case_ids, 50, 0)
    return R.Scored(name, pred, m, str(out_dir), {})


def report_text(model, runs, tmp_path, shift=None, calibration=False) -> str:
    """report.md of hand-built runs through the report's sections, in job.py's order."""
    job = sections.Job(model, ScoreOptions(), str(tmp_path))
    groups = sections.SubgroupMetrics(job)
    body = [sections.Metrics(job), sections.Shift(job, shift), groups] + \
        ([sections.Calibration(job)] if calibration else [])
    path = R.write_report(model, runs, str(tmp_path), {}, [s.lines(runs, {}) for s in body],
                          groups.lead(runs))
    return open(path).read()


def cases_of(n_cases, per_case=2):
    return [f"c{i // per_case}" for i in range(n_cases * per_case)]


@pytest.mark.parametrize("k, shown", [(2, False), (3, False), (4, True)])
def test_top_k_rows_only_below_the_number_of_classes(tmp_path, k, shown):
    model = fake_model("abcd"[:k])
    labels = np.repeat(np.arange(12) % k, 2)
    text = report_text(model, [fake_run(model, labels, cases_of(12), tmp_path)], tmp_path)
    assert "| top-1 accuracy, case level |" in text
    assert ("top-3 accuracy" in text) == shown


def test_mean_auc_names_the_classes_it_averages(tmp_path):
    model = fake_model(["akiec", "bcc", "df", "vasc"])
    labels = np.repeat(np.arange(10) % 2, 2)          # no df, no vasc
    run = fake_run(model, labels, cases_of(10), tmp_path)
    text = report_text(model, [run], tmp_path)
    label = "mean ROC AUC over 2 of 4 classes (akiec, bcc; df, vasc have no positive)"
    assert f"| {label}, case level | {run.metrics['case']['mean_auc']:.3f}" in text
    assert f"| {label}, image level |" in text
    assert "mean PR AUC over 2 of 4 classes (akiec, bcc; df, vasc have no positive)" in text
    assert "(4 classes)" not in text
    roc = run.metrics["case"]["roc_auc"]
    assert run.metrics["case"]["mean_auc"] == pytest.approx(np.mean([roc["akiec"], roc["bcc"]]))
    # every class present: the plain label
    full = fake_run(model, np.repeat(np.arange(12) % 4, 2), cases_of(12), tmp_path)
    assert "| mean ROC AUC (4 classes), case level |" in report_text(model, [full], tmp_path)
    # two sources that disagree: the row says so and a note per source names its classes
    text = report_text(model, [full, R.Scored("compare", run.pred, run.metrics, "", {})],
                       tmp_path)
    assert "mean ROC AUC over the classes where it is defined (below), case level" in text
    assert "- Case level, compare: mean ROC AUC over 2 of 4 classes (akiec, bcc; df, " \
           "vasc have no positive)." in text
    assert "- Case level, primary: mean ROC AUC (4 classes)." in text


def _captured_figures(monkeypatch, model, runs, tmp_path) -> dict:
    figs = {}

    def keep(fig, path, dpi=110):
        figs[path.rsplit("/", 1)[-1][:-4]] = fig
        return path
    monkeypatch.setattr(figures, "save_png", keep)
    figures.write_figures(model, runs, str(tmp_path), model.class_names)
    return figs


def test_confusion_titles_say_what_is_drawn(monkeypatch, tmp_path):
    model = fake_model("abc")
    labels = np.repeat(np.arange(15) % 3, 2)
    run = fake_run(model, labels, cases_of(15), tmp_path)
    fig = _captured_figures(monkeypatch, model, [run], tmp_path)["confusion"]
    case_labels, case_probs = R.level_arrays(model, run, "case")
    cm = M.confusion_matrix(case_labels, case_probs.argmax(1), 3)
    counts, norm = fig.axes[:2]
    assert counts.get_title() == "primary: counts"
    assert norm.get_title() == "primary: rows normalised"
    np.testing.assert_array_equal(counts.images[0].get_array(), cm)
    np.testing.assert_allclose(norm.images[0].get_array(), cm / cm.sum(1, keepdims=True))
    assert [t.get_text() for t in counts.texts] == [str(v) for v in cm.ravel()]
    assert [t.get_text() for t in norm.texts] == [
        f"{v:.2f}" for v in (cm / cm.sum(1, keepdims=True)).ravel()]
    assert "counts and rows normalised" in fig._suptitle.get_text()


def test_roc_and_pr_curves_at_case_and_image_level(monkeypatch, tmp_path):
    model = fake_model("ab")
    labels = np.repeat(np.arange(8) % 2, 3)
    run = fake_run(model, labels, cases_of(8, 3), tmp_path)
    figs = _captured_figures(monkeypatch, model, [run], tmp_path)
    probs = run.pred.probs.astype(np.float64)
    for kind, fn in (("roc", M.roc_auc), ("pr", M.average_precision)):
        ax = figs[kind].axes[0]
        got = [lab for lab in ax.get_legend_handles_labels()[1]]
        want_image = fn(labels == 0, probs[:, 0])
        case_labels, case_probs = R.level_arrays(model, run, "case")
        want_case = fn(case_labels == 0, case_probs[:, 0])
        assert got == [f"primary, case ({want_case:.3f})", f"primary, image ({want_image:.3f})"]
        assert "image level (dashed)" in figs[kind]._suptitle.get_text()


def test_every_ece_names_its_level_and_shift_matches_calibration(tmp_path):
    meta = {"calibration": {"temperature": 1.5, "split": "validation", "num_images": 40,
                            "before": {"ece": 0.2, "nll": 0.7}, "after": {"ece": 0.1, "nll": 0.6}}}
    model = fake_model("abc", meta)
    a = fake_run(model, np.repeat(np.arange(12) % 3, 2), cases_of(12), tmp_path)
    b = fake_run(model, np.repeat(np.arange(9) % 3, 2), cases_of(9), tmp_path, "compare", 1)

    def rows(r):
        return (r.pred.probs.astype(np.float64), r.pred.source.labels, r.pred.source.case_ids)
    shift = S.shift_summary(model.task, model.class_names, rows(a), rows(b), replicates=20)
    text = report_text(model, [a, b], tmp_path, shift=shift, calibration=True)
    for line in text.splitlines():
        if "ECE" in line:
            assert "case level" in line or "image-level ECE" in line or \
                "image level" in line, line
    assert "image-level ECE 0.200 → 0.100" in text
    label = "ECE (15 bins, top-class confidence), case level"
    shift_row = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} |")
                     and ln.count("|") == 5)
    case_eces = [r.metrics["calibration"]["case"]["ece"] for r in (a, b)]
    assert shift_row == f"| {label} | {case_eces[0]:.3f} | {case_eces[1]:.3f} | |"
    assert shift["ece"]["primary"]["ece"] == pytest.approx(case_eces[0])


def _gap(ci, difference=0.2):
    return {"metric": "mean_auc", "level": "case", "min_cases": 5, "best": "female",
            "worst": "male", "best_value": 0.8, "worst_value": 0.8 - difference,
            "difference": difference, "ci95": ci}


def test_subgroup_flag_calls_a_gap_a_finding_only_beyond_noise():
    def flag(**gaps):
        return G.flag_lines({n: {"column": n, "groups": {}, "largest_gap": g}
                             for n, g in gaps.items()}, "primary")[0]
    found = flag(sex=_gap([0.05, 0.35]))
    assert found.startswith("**Largest subgroup gap (primary):** mean ROC AUC (case level) "
                            "by sex: female 0.800 vs male 0.600, difference 0.200")
    assert "a gap beyond noise (the 95 % CI excludes 0)" in found and "no gap" not in found
    noise = flag(sex=_gap([-0.1, 0.4]))
    assert "no gap beyond noise (the 95 % CI includes 0)" in noise
    assert "Beyond noise:" not in noise
    # the largest gap is noise, a smaller one is not: both are said
    both = flag(sex=_gap([-0.1, 0.4]), site=_gap([0.02, 0.2], 0.1))
    assert "no gap beyond noise" in both and "Beyond noise: mean ROC AUC (case level) by site" \
        in both
    assert "not judged" in flag(sex=_gap(None))
    lines = G.report_lines({"sex": {"column": "sex", "groups": {},
                                    "largest_gap": _gap([-0.1, 0.4])}}, "multiclass", "p")
    assert any(ln.startswith("Largest gap:") and "no gap beyond noise" in ln for ln in lines)


def test_unknown_subgroup_column_exits_2_before_the_model_loads(tmp_path, monkeypatch, capsys):
    data = write_records(str(tmp_path / "rec"), "test", synthetic_cases(2, 1, size=8), ["a", "b"])
    import json
    info = json.load(open(tmp_path / "rec" / "dataset.json"))
    json.dump({**info, "metadata_columns": ["sex", "age"]},
              open(tmp_path / "rec" / "dataset.json", "w"))

    def no_load(path):
        raise AssertionError("the model was loaded before --subgroups was checked")
    monkeypatch.setattr(job, "load_model", no_load)
    code = sc.main(["--model", str(tmp_path / "no_model"), "--data", data, "--out",
                    str(tmp_path / "out"), "--subgroups", "sex,site", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--subgroups site" in err[0] and "(has: sex, age)" in err[0]


def test_explanations_state_the_grid_and_the_overlay_size(tmp_path):
    from tfmicle.score import explain
    assert [explain.cam_grid(s) for s in (32, 28, 224, 96)] == [4, 4, 7, 3]
    item = {"kind": "error", "image_id": "i.png", "label": "a", "predicted": "b",
            "confidence": 0.9, "peak_row": 3, "peak_col": 4,
            "png": str(tmp_path / "explain" / "error_1.png")}
    run = R.Scored("primary", None, {}, str(tmp_path), {})
    text = "\n".join(explain.section([run], {"primary": {"items": [item], "input_size": 32}},
                                     str(tmp_path)))
    assert "a 4 x 4 grid" in text and "interpolated to 32 x 32" in text
    assert "each panel is shown at 160 x 160 px" in text and "Left: the image the model saw" in text
