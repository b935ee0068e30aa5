"""Batch scoring: metrics.json equals scikit-learn on the written prediction files;
image folders, CSV manifests, corrupt images, --compare, multi-label, formats, CLI."""
import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm

import _finetune_runs as runs
from conftest import png_bytes
from tfmicle import score as sc
from tfmicle.score import cli as score_cli
from tfmicle.score import report as score_report
from tfmicle.data import records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def probs_of(rows, classes):
    return np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])


@pytest.mark.slow
def test_records_metrics_equal_sklearn_on_written_predictions(tmp_path, exported_model):
    exp = exported_model
    data = exp["run"]["data"]
    out = tmp_path / "scored"
    result = sc.score(str(Path(exp["path"]).parent), data, str(out),
                      sc.ScoreOptions(split="test", replicates=200))
    classes = ["a", "b", "c"]
    img = read_csv(out / "predictions_images.csv")
    cases = read_csv(out / "predictions_cases.csv")
    m = json.load(open(out / "metrics.json"))
    assert result["runs"][0]["scored"] == len(img) == 13 and m["num_cases"] == len(cases) == 9

    # Image level, from the file.
    p = probs_of(img, classes)
    y = np.array([classes.index(r["label"]) for r in img])
    assert [r["predicted"] for r in img] == [classes[i] for i in p.argmax(1)]
    assert m["image"]["top1_accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert m["image"]["top3_accuracy"] == 1.0  # 3 classes
    for c, name in enumerate(classes):
        assert m["image"]["roc_auc"][name] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]))
        assert m["image"]["pr_auc"][name] == pytest.approx(
            skm.average_precision_score(y == c, p[:, c]))
    assert m["image"]["mean_auc"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))

    # Case level: the case file is the mean of the image rows, metrics follow it.
    groups = {}
    for r, row in zip(p, img):
        groups.setdefault(row["case_id"], []).append(r)
    cp = probs_of(cases, classes)
    for row, q in zip(cases, cp):
        np.testing.assert_allclose(q, np.mean(groups[row["case_id"]], axis=0), rtol=1e-12)
        assert int(row["num_images"]) == len(groups[row["case_id"]])
    cy = np.array([classes.index(r["label"]) for r in cases])
    assert m["case"]["top1_accuracy"] == pytest.approx(skm.accuracy_score(cy, cp.argmax(1)))
    assert m["case"]["mean_auc"] == pytest.approx(
        np.mean([skm.roc_auc_score(cy == c, cp[:, c]) for c in range(3)]))
    lo, hi = m["case"]["ci95"]["mean_auc"]
    assert lo <= m["case"]["mean_auc"] <= hi

    # The tf.data scoring path gives what the serving signature gives for the same bytes.
    by_id = {i: b for case in records.iter_cases(data, "test")
             for i, b in zip(case.image_ids, case.images)}
    encoded = [by_id[r["image_id"]] for r in img]
    served = tf.saved_model.load(exp["path"]).signatures["serving_default"](
        images=tf.constant(encoded))["probabilities"].numpy()
    np.testing.assert_allclose(p, served, atol=1e-5)
    report = (out / "report.md").read_text()
    assert "mean ROC AUC" in report and "roc.png" in report
    for f in ("roc.png", "pr.png", "confusion.png"):
        assert (out / f).read_bytes()[:8] == PNG_MAGIC


def _image_folder(d: Path):
    rng = np.random.default_rng(7)
    for cls in ("a", "b"):
        (d / cls).mkdir(parents=True)
        for i in range(3):
            (d / cls / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (30, 40, 3))))
    (d / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (d / "notes.txt").write_text("not an image")
    (d / "loose.png").write_bytes(png_bytes(rng.integers(0, 256, (20, 20, 3))))


@pytest.mark.slow
def test_cli_folder_with_corrupt_image_compared_with_records(tmp_path, capsys, exported_model):
    exp = exported_model
    folder = tmp_path / "imgs"
    _image_folder(folder)
    out = tmp_path / "out"
    rc = sc.main(["--model", exp["path"], "--data", str(folder), "--compare", exp["run"]["data"],
                  "--compare-split", "test", "--out", str(out), "--bootstrap", "50", "-q"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "primary: 7 images scored, 1 skipped" in stdout
    skipped = read_csv(out / "skipped.csv")
    assert [s["image_id"] for s in skipped] == ["b/broken.png"] and skipped[0]["reason"]
    img = read_csv(out / "predictions_images.csv")
    assert sorted(r["image_id"] for r in img) == sorted(
        ["a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png", "loose.png"])
    assert {r["image_id"]: r["label"] for r in img}["loose.png"] == ""
    assert {r["label"] for r in img if r["image_id"].startswith("a/")} == {"a"}
    m = json.load(open(out / "metrics.json"))
    assert m["num_images"] == 7 and m["image"]["num_labeled"] == 6 and m["num_skipped"] == 1
    cm = json.load(open(out / "compare" / "metrics.json"))
    assert cm["num_images"] == 13
    report = (out / "report.md").read_text()
    assert "| primary | compare |" in report and "b/broken.png" in report
    assert (out / "confusion.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_csv_manifest_missing_file_and_user_errors(tmp_path, capsys, exported_model):
    exp = exported_model
    folder = tmp_path / "imgs"
    _image_folder(folder)
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,case_id,label\nimgs/a/0.png,p1,a\nimgs/a/1.png,p1,a\n"
                        "imgs/b/0.png,p2,b\nimgs/b/gone.png,p3,b\nimgs/loose.png,p4,\n")
    out = tmp_path / "out"
    assert sc.main(["--model", exp["path"], "--data", str(manifest), "--out", str(out), "-q",
                    "--bootstrap", "0"]) == 0
    cases = read_csv(out / "predictions_cases.csv")
    assert [(c["case_id"], c["num_images"], c["label"]) for c in cases] == [
        ("p1", "2", "a"), ("p2", "1", "b"), ("p4", "1", "")]
    assert read_csv(out / "skipped.csv")[0]["reason"] == "file not found"
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    for text, msg in (("image,label\nimgs/a/0.png,zebra\n", "unknown class 'zebra'"),
                      ("path_x\nimgs/a/0.png\n", "no 'image' column")):
        bad.write_text(text)
        assert sc.main(["--model", exp["path"], "--data", str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]
    assert sc.main(["--model", str(tmp_path / "nomodel"), "--data", str(bad),
                    "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert sc.main(["--model", exp["path"], "--data", exp["run"]["data"], "--split", "nope",
                    "--out", str(out)]) == 2
    assert "split 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_multilabel_records_metrics_use_definite_labels(tmp_path, exported_ml_model):
    exp = exported_ml_model
    out = tmp_path / "ml"
    sc.score(exp["path"], exp["run"]["data"], str(out), sc.ScoreOptions(
        split="test", replicates=0, auc_classes=["Atelectasis", "Edema"]))
    classes = runs.ML_CLASSES
    img = read_csv(out / "predictions_images.csv")
    m = json.load(open(out / "metrics.json"))
    by_id = {i: (case.case_id, case.label_multi) for case in records.iter_cases(
        exp["run"]["data"], "test") for i in case.image_ids}
    want_rows = [by_id[r["image_id"]] for r in img]
    assert len(img) == len(by_id) and [r["case_id"] for r in img] == [c for c, _ in want_rows]
    p = probs_of(img, classes)
    aucs = []
    for c, name in enumerate(classes):
        lab = [r[f"label_{name}"] for r in img]
        for (cid, lm), text in zip(want_rows, lab):  # labels written as stored
            v = lm[c] if lm else math.nan
            assert text == ("" if math.isnan(v) else str(int(v)))
        keep = np.array([t in ("0", "1") for t in lab])
        y = np.array([t == "1" for t in lab])[keep]
        auc = skm.roc_auc_score(y, p[keep, c])
        assert m["image"]["roc_auc"][name] == pytest.approx(auc)
        assert m["image"]["pr_auc"][name] == pytest.approx(
            skm.average_precision_score(y, p[keep, c]))
        aucs.append(auc)
    assert m["auc_classes"] == ["Atelectasis", "Edema"]
    assert m["image"]["mean_auc"] == pytest.approx(np.mean(aucs[:2]))
    assert "top1_accuracy" not in m["image"]


def test_model_without_scoring_function_goes_through_serving_default(tmp_path):
    """Any SavedModel with the serving contract scores (here the serving package's
    mean-colour model, whose numpy reference is independent of tfmicle)."""
    from serving.toy import expected_mean_colour, save_mean_colour_model
    rng = np.random.default_rng(0)
    w, b = rng.normal(0, 3, (3, 4)), rng.normal(0, 0.5, 4)
    model_dir = save_mean_colour_model(tmp_path / "toy" / "1", w, b, ["r", "g", "b", "k"],
                                       size=8)
    pics = tmp_path / "pics"
    pics.mkdir()
    arrays = [rng.integers(0, 256, (16, 24, 3)).astype(np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        (pics / f"{i}.png").write_bytes(png_bytes(a))
    (pics / "x.png").write_bytes(b"junk")
    out = tmp_path / "out"
    result = sc.score(str(tmp_path / "toy"), str(pics), str(out), sc.ScoreOptions(batch_size=2))
    assert result["version"] == 1 and result["runs"][0]["skipped"] == 1
    img = read_csv(out / "predictions_images.csv")
    got = probs_of(img, ["r", "g", "b", "k"])
    want = np.stack([expected_mean_colour(a, w, b) for a in arrays])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert not (out / "metrics.json").exists()  # no labels, no metrics
    assert model_dir.name == "1"


@pytest.mark.slow
def test_folder_of_dicom_and_tiff_scores_as_data_prep_reads_it(tmp_path):
    """score accepts what data_prep accepts: .dcm (and .tif) files go through
    data_prep's reader. Pixel values span 0..255, so data_prep's 8-bit scaling is the
    identity and the numpy reference needs no tfmicle code."""
    from PIL import Image
    from serving.toy import expected_mean_colour, save_mean_colour_model
    from test_imagefiles import _dicom
    rng = np.random.default_rng(3)
    w, b = rng.normal(0, 3, (3, 4)), rng.normal(0, 0.5, 4)
    save_mean_colour_model(tmp_path / "toy" / "1", w, b, ["r", "g", "b", "k"], size=8)
    pics = tmp_path / "dicoms"
    grays = []
    for i, cls in enumerate(("r", "r", "k")):
        g = rng.integers(0, 256, (16, 24)).astype(np.uint16)
        g[0, 0], g[0, 1] = 0, 255
        (pics / cls).mkdir(parents=True, exist_ok=True)
        _dicom(pics / cls / f"{i}.dcm", g)
        grays.append(np.repeat(g[..., None], 3, axis=-1).astype(np.uint8))
    colour = rng.integers(0, 256, (16, 24, 3)).astype(np.uint8)
    Image.fromarray(colour, "RGB").save(pics / "k" / "colour.tif")
    (pics / "k" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk")
    out = tmp_path / "out"
    result = sc.score(str(tmp_path / "toy"), str(pics), str(out),
                      sc.ScoreOptions(batch_size=2, replicates=10))
    run = result["runs"][0]
    assert run["scored"] == 4 and run["skipped"] == 1
    img = {r["image_id"]: r for r in read_csv(out / "predictions_images.csv")}
    assert sorted(img) == ["k/2.dcm", "k/colour.tif", "r/0.dcm", "r/1.dcm"]
    assert [img[k]["label"] for k in sorted(img)] == ["k", "k", "r", "r"]
    order = ["r/0.dcm", "r/1.dcm", "k/2.dcm", "k/colour.tif"]
    got = probs_of([img[k] for k in order], ["r", "g", "b", "k"])
    want = np.stack([expected_mean_colour(a, w, b) for a in grays + [colour]])
    np.testing.assert_allclose(got, want, atol=1e-4)
    skipped = read_csv(out / "skipped.csv")
    assert [s["image_id"] for s in skipped] == ["k/broken.dcm"]
    from tfmicle.imagefiles import ImageError, load_image
    with pytest.raises(ImageError) as why:  # the reason data_prep's skipped.csv would give
        load_image(str(pics / "k" / "broken.dcm"))
    assert skipped[0]["reason"] == str(why.value) and "DICOM" in skipped[0]["reason"]
    assert json.load(open(out / "metrics.json"))["num_images"] == 4


def test_scoring_nothing_exits_2_with_the_cause(tmp_path, capsys, caplog):
    """A labelled CSV whose images are not under its folder, and a folder of images none
    of which decodes: one line naming the cause (and --images), exit 2, never 'no labels'."""
    from serving.toy import save_mean_colour_model
    rng = np.random.default_rng(0)
    save_mean_colour_model(tmp_path / "toy" / "1", rng.normal(0, 3, (3, 2)), np.zeros(2),
                           ["r", "g"], size=8)
    (tmp_path / "pics").mkdir()
    for i in range(3):
        (tmp_path / "pics" / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (8, 8, 3))))
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "manifest.csv"
    manifest.write_text("image,label\npics/0.png,r\npics/1.png,g\npics/2.png,r\n")
    model, out = str(tmp_path / "toy"), str(tmp_path / "out")
    assert sc.main(["--model", model, "--data", str(manifest), "--out", out, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of its 3 images found under" in err[0], err
    assert "--images ROOT" in err[0] and "pics/0.png" in err[0]
    assert "no labels" not in caplog.text and "has a label" not in caplog.text
    assert sc.main(["--model", model, "--data", str(manifest), "--images", str(tmp_path),
                    "--out", out, "-q", "--bootstrap", "0"]) == 0
    assert "3 images scored, 0 skipped" in capsys.readouterr().out
    (tmp_path / "junk").mkdir()
    for i in range(2):
        (tmp_path / "junk" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert sc.main(["--model", model, "--data", str(tmp_path / "junk"), "--out", out,
                    "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of its 2 images could be read or decoded" in err[0], err


@pytest.mark.subprocess
def test_cli_progress_in_a_pipe_is_plain_lines(tmp_path):
    """stderr to a pipe: no tqdm bar (\r, ANSI codes), plain lines with the rate and ETA."""
    import subprocess
    import sys
    from serving.toy import save_mean_colour_model
    rng = np.random.default_rng(0)
    save_mean_colour_model(tmp_path / "toy" / "1", rng.normal(0, 3, (3, 2)), np.zeros(2),
                           ["r", "g"], size=8)
    (tmp_path / "pics").mkdir()
    for i in range(5):
        (tmp_path / "pics" / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (8, 8, 3))))
    r = subprocess.run([sys.executable, "-m", "tfmicle.score", "--model", str(tmp_path / "toy"),
                        "--data", str(tmp_path / "pics"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    for out in (r.stdout, r.stderr):
        assert "\r" not in out and "\x1b[" not in out
        assert all(len(line) <= 300 for line in out.splitlines())
    assert "primary: img 5/5 (100%)" in r.stderr and "img/s  ETA" in r.stderr, r.stderr


def test_parquet_needs_pyarrow_or_writes_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(score_cli, "parquet_available", lambda: False)
    rc = sc.main(["--model", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path),
                  "--format", "parquet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pyarrow" in err[0]


def test_write_table_parquet_round_trip(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    path = score_report.write_table(str(tmp_path / "t"), ["case_id", "num_images", "prob_a"],
                                    [["c1", 2, "0.25"], ["c2", 1, "0.5"]], "parquet")
    t = pq.read_table(path).to_pydict()
    assert t == {"case_id": ["c1", "c2"], "num_images": [2, 1], "prob_a": [0.25, 0.5]}


def test_help_and_bad_flag(capsys):
    with pytest.raises(SystemExit) as e:
        sc.main(["--help"])
    assert e.value.code == 0 and "--compare" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        sc.main(["--model", "m", "--data", "d", "--out", "o", "--format", "xls"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_corrupt_image_inside_records_is_listed_and_rows_stay_aligned(tmp_path, exported_model):
    from conftest import synthetic_cases, write_records
    exp = exported_model
    cases = synthetic_cases(5, 2, seed=3)
    cases[2]["images"][1] = b"\xff\xd8\xff truncated jpeg"
    d = write_records(str(tmp_path / "rec"), "test", cases, ["a", "b", "c"])
    out = tmp_path / "out"
    sc.score(exp["path"], d, str(out), sc.ScoreOptions(split="test", replicates=0, report=False))
    skipped = read_csv(out / "skipped.csv")
    assert [(s["image_id"], s["case_id"]) for s in skipped] == [("case0002/img1.png", "case0002")]
    img = read_csv(out / "predictions_images.csv")
    assert len(img) == 9
    want = {f"case{c:04d}/img{i}.png": ("abc"[c % 3], f"case{c:04d}") for c in range(5)
            for i in range(2)}
    for r in img:
        assert (r["label"], r["case_id"]) == want[r["image_id"]]


def test_skip_reasons_come_from_the_one_pass(tmp_path, monkeypatch):
    """A skipped image's reason is learnt in the pass that scores it: each source is
    streamed once and each file read once, and the records may be gone right after that
    pass (a second pass to explain a failure would find nothing). The reasons are the
    decoder's words and, for a file data_prep converts, data_prep's."""
    from collections import Counter
    from conftest import synthetic_cases, write_records
    from serving.toy import save_mean_colour_model
    from tfmicle.imagefiles import ImageError, decode_error, load_image
    from tfmicle.score import source_files
    from tfmicle.score.predict import predict
    from tfmicle.score.sources import open_source
    rng = np.random.default_rng(4)
    save_mean_colour_model(tmp_path / "toy" / "1", rng.normal(0, 3, (3, 3)), np.zeros(3),
                           ["a", "b", "c"], size=8)
    model = sc.load_model(str(tmp_path / "toy"))
    cases = synthetic_cases(4, 2, size=16, seed=3)
    bad_jpeg = b"\xff\xd8\xff truncated jpeg"
    cases[1]["images"][0] = bad_jpeg
    rec = write_records(str(tmp_path / "rec"), "test", cases, ["a", "b", "c"])
    pics = tmp_path / "pics"
    (pics / "a").mkdir(parents=True)
    (pics / "a" / "0.png").write_bytes(png_bytes(rng.integers(0, 256, (8, 8, 3))))
    broken_png = b"\x89PNG\r\n\x1a\nnot really"
    (pics / "a" / "broken.png").write_bytes(broken_png)
    (pics / "a" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk")
    with pytest.raises(ImageError) as dicom_reason:
        load_image(str(pics / "a" / "broken.dcm"))

    reads = Counter()
    real_read = source_files.read_image

    def counted_read(path, convert):
        reads[path] += 1
        return real_read(path, convert)
    monkeypatch.setattr(source_files, "read_image", counted_read)
    for spec in (rec, str(pics)):
        src = open_source(spec, model, "test")
        streams = []
        real_stream = type(src).encoded
        monkeypatch.setattr(type(src), "encoded",
                            lambda self: streams.append(1) or real_stream(self))
        pred = predict(model, src)
        assert len(streams) == 1, spec
        if spec == rec:
            import shutil
            shutil.rmtree(rec)
            assert pred.skipped == [("case0001/img0.png", "case0001",
                                     decode_error(bad_jpeg, full=True, clean=True))]
            assert len(pred.rows) == 7
        else:
            assert sorted(pred.skipped) == [
                ("a/broken.dcm", "a/broken.dcm", str(dicom_reason.value)),
                ("a/broken.png", "a/broken.png", decode_error(broken_png, full=True, clean=True))]
            assert len(pred.rows) == 1 and sorted(reads.values()) == [1, 1, 1]
