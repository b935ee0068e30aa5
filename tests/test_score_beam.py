"""`python -m tfmicle.score --runner beam` writes what the local runner writes.

The local runner runs here, in-process; the Beam runner runs as a subprocess with the
Beam environment's python (DirectRunner; apache-beam pins protobuf < 7, so setup.sh
gives it .venv-beam; conftest.beam_python finds it or TFMICLE_BEAM_PYTHON). Both score
the same records split (11 shards, more than the pipeline reads at once, with a
corrupt image and per-image metadata) and CSV manifest (a TIFF converted by data_prep,
a missing and a corrupt file); predictions are compared row by row by image id and
metrics.json, shift.json and the report must be equal. The serving_default path (a
SavedModel without predict_preprocessed) is checked against a numpy reference.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import beam_python, png_bytes, run_main, synthetic_cases, write_records
from tfmicle import score as sc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEAM_PYTHON = beam_python()
needs_beam = pytest.mark.skipif(BEAM_PYTHON is None, reason=(
    "no Beam environment: run setup.sh (creates .venv-beam) or set TFMICLE_BEAM_PYTHON"))
CLASSES = ["a", "b", "c"]


def _has_apache_beam() -> bool:
    try:
        import apache_beam  # noqa: F401
        return True
    except ImportError:
        return False


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_beam(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([BEAM_PYTHON, "-m", "tfmicle.score", "--runner", "beam", "--quiet",
                        *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def same_predictions(local: str, beam: str, table: str, key: str) -> int:
    """The rows of one table agree by key: every column equal, prob_* within 1e-6
    (order-independent). Returns the number of rows."""
    a = {r[key]: r for r in read_csv(os.path.join(local, table))}
    b = {r[key]: r for r in read_csv(os.path.join(beam, table))}
    assert sorted(a) == sorted(b), table
    for k, ra in a.items():
        rb = b[k]
        assert list(ra) == list(rb)
        for col in ra:
            if col.startswith("prob_"):
                assert abs(float(ra[col]) - float(rb[col])) <= 1e-6, (table, k, col)
            else:
                assert ra[col] == rb[col], (table, k, col)
    return len(a)


def _records(d: str) -> str:
    """test: 23 cases of 1-3 PNGs (45 images) in 11 shards (2 or 3 cases each), metadata "site" per
    image, an unlabeled case and a corrupt image."""
    cases = synthetic_cases(23, lambda c: 1 + c % 3, size=36, seed=7)
    for c, case in enumerate(cases):
        case["meta_keys"] = ["site"]
        case["meta"] = [[["arm", "leg", "back"][(c + i) % 3]] for i in range(len(case["images"]))]
    cases[4]["label_class"] = -1
    cases[5]["images"][1] = b"\xff\xd8\xff truncated jpeg"
    write_records(d, "test", cases, CLASSES, num_shards=11)
    info_path = os.path.join(d, "dataset.json")
    info = json.load(open(info_path))
    info["metadata_columns"] = ["site"]
    json.dump(info, open(info_path, "w"))
    return d


def _manifest(d) -> str:
    """A CSV manifest: PNGs, a TIFF (data_prep converts it), a missing and a corrupt file,
    a metadata column."""
    from PIL import Image
    rng = np.random.default_rng(11)
    os.makedirs(d / "img")
    rows = []
    for i in range(9):
        a = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
        a[..., i % 3] = a[..., i % 3] // 2 + 127
        name = f"img/{i}.tif" if i == 4 else f"img/{i}.png"
        if i == 4:
            Image.fromarray(a, "RGB").save(d / name)
        else:
            (d / name).write_bytes(png_bytes(a))
        rows.append([name, f"k{i // 2}", CLASSES[i % 3], ["arm", "leg"][i % 2]])
    (d / "img" / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    rows += [["img/bad.jpg", "k9", "a", "arm"], ["img/none.png", "k9", "a", "leg"]]
    with open(d / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "case_id", "label", "site"])
        w.writerows(rows)
    return str(d / "m.csv")


def _toy(path, seed=5):
    """The mean-colour SavedModel (no predict_preprocessed): (path, weights, bias)."""
    from serving.toy import save_mean_colour_model
    rng = np.random.default_rng(seed)
    w, b = rng.normal(0, 30, (3, 3)), rng.normal(0, 1, 3)
    save_mean_colour_model(path / "1", w, b, CLASSES, size=8)
    return str(path), w, b


def _reference_rows(items, w, b, error=lambda data: "undecodable") -> list[dict]:
    """What the model handler gives per image, from the mean-colour model's numpy
    formula (PIL decodes; an image PIL cannot read is an error, worded by error(bytes)),
    as the rows come back from the staging files (through JSON)."""
    import io
    from PIL import Image
    from serving.toy import expected_mean_colour
    from tfmicle.score.beam_rows import ERROR
    rows = []
    for key, data in items:
        try:
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        except Exception:  # noqa: BLE001
            rows.append({**key, ERROR: error(data)})
            continue
        rows.append({**key, "p": expected_mean_colour(pixels, w, b).tolist()})
    return json.loads(json.dumps(rows))


def test_gathered_rows_become_the_local_predictions(tmp_path):
    """The driver's side of --runner beam, without Beam: rows made by the worker
    functions (records in 11 shards, more than are read at once; an image folder), in
    shuffled order, come back as the local runner's Predictions: the same row order,
    ids, labels, metadata, skipped images (with the local reasons) and probabilities."""
    import random
    from tfmicle.score.beam_rows import assemble, read_file, shard_images, work_line
    from tfmicle.score.predict import _decode_error, predict
    from tfmicle.score.sources import open_source
    from tfmicle.data.records import list_shards
    model_path, w, b = _toy(tmp_path / "toy")
    model = sc.load_model(model_path)
    data = _records(str(tmp_path / "rec"))
    pics = tmp_path / "pics"
    for i in range(5):
        (pics / CLASSES[i % 3]).mkdir(parents=True, exist_ok=True)
        a = np.random.default_rng(i).integers(0, 256, (16, 16, 3)).astype(np.uint8)
        (pics / CLASSES[i % 3] / f"{i}.png").write_bytes(png_bytes(a))
    (pics / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for spec, split in ((data, "test"), (str(pics), None)):
        local = predict(model, open_source(spec, model, split))
        src = open_source(spec, model, split)
        if src.kind == "records":
            items = [x for s, path in enumerate(list_shards(data, "test"))
                     for x in shard_images((s, path), src.num_labels)]
            rows = _reference_rows(items, w, b)
        else:   # the handler's own words for an image it cannot decode (SavedModelHandler)
            items = [read_file(work_line(i, p)) for i, p in enumerate(src.paths)]
            rows = _reference_rows(items, w, b, _decode_error)
        random.Random(0).shuffle(rows)
        got = assemble(model, src, rows)
        want = local.source
        assert src.image_ids == want.image_ids and src.case_ids == want.case_ids
        np.testing.assert_array_equal(src.labels, want.labels)
        assert src.metadata() == want.metadata()
        np.testing.assert_array_equal(got.rows, local.rows)
        np.testing.assert_allclose(got.probs, local.probs, atol=1e-5)
        assert [s[:2] for s in got.skipped] == [s[:2] for s in local.skipped]
        if src.kind == "records":   # the reason is the handler's (TF's decoder's words)
            assert got.skipped == [("case0005/img1.png", "case0005", "undecodable")]
        else:                       # files: the local path's own reason, read again
            assert got.skipped == local.skipped and len(got.skipped) == 1
        if src.kind == "records":   # per-image metadata from the rows, as records has it
            assert src.metadata()[0] == ["site"] and len(src.metadata()[1]) == 45
            assert {m["site"] for m in src.metadata()[1]} == {"arm", "leg", "back"}


@pytest.mark.slow
@needs_beam
def test_beam_scores_records_and_manifest_like_local(tmp_path, exported_model):
    from tfmicle.score.subgroups import Subgroups, parse_subgroups
    # the exported tiny ResNet of test_score.py (a session fixture: one run serves both)
    model = str(os.path.dirname(exported_model["path"]))
    data = _records(str(tmp_path / "rec"))
    manifest = _manifest(tmp_path / "csv")
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    sc.score(model, data, local, sc.ScoreOptions(
        split="test", compare=manifest, replicates=50, seed=3,
        subgroups=Subgroups(parse_subgroups("site"), None, 2), batch_size=8, explain=1))
    r = run_beam("--model", model, "--data", data, "--split", "test", "--compare", manifest,
                 "--out", beam, "--bootstrap", "50", "--seed", "3", "--subgroups", "site",
                 "--subgroup-min-cases", "2", "--batch-size", "5", "--explain", "1")
    assert "primary: 44 images scored, 1 skipped" in r.stdout

    assert same_predictions(local, beam, "predictions_images.csv", "image_id") == 44
    assert same_predictions(local, beam, "predictions_cases.csv", "case_id") == 23
    assert same_predictions(local, beam, "skipped.csv", "image_id") == 1
    assert read_csv(os.path.join(beam, "skipped.csv"))[0]["image_id"] == "case0005/img1.png"
    # the metadata column came through the pipeline
    assert {r["meta_site"] for r in read_csv(os.path.join(beam, "predictions_images.csv"))} \
        == {"arm", "leg", "back"}
    cmp_l, cmp_b = os.path.join(local, "compare"), os.path.join(beam, "compare")
    assert same_predictions(cmp_l, cmp_b, "predictions_images.csv", "image_id") == 9
    assert same_predictions(cmp_l, cmp_b, "predictions_cases.csv", "case_id") == 5
    skipped = {r["image_id"]: r["reason"] for r in read_csv(os.path.join(cmp_b, "skipped.csv"))}
    assert sorted(skipped) == ["img/bad.jpg", "img/none.png"]
    assert skipped["img/none.png"] == "file not found"
    assert same_predictions(cmp_l, cmp_b, "skipped.csv", "image_id") == 2

    # Metrics come from the gathered predictions in the local row order (the bootstrap
    # draws cases by position), so they are the local numbers exactly.
    for rel in ("metrics.json", "shift.json", "compare/metrics.json", "report.md",
                "explain/explanations.csv"):
        with open(os.path.join(local, rel)) as a, open(os.path.join(beam, rel)) as b:
            assert a.read() == b.read(), rel
    m = json.load(open(os.path.join(beam, "metrics.json")))
    assert m["num_images"] == 44 and m["num_cases"] == 23
    assert set(m["subgroups"]["site"]["groups"]) == {"arm", "leg", "back"}
    assert not os.path.exists(os.path.join(beam, ".beam-score"))   # staging cleaned up


@pytest.mark.slow
@needs_beam
def test_beam_serving_default_model_matches_numpy_reference(tmp_path):
    """A SavedModel without predict_preprocessed goes through serving_default in the
    model handler; the probabilities are the mean-colour model's numpy formula."""
    from serving.toy import expected_mean_colour
    _, w, b = _toy(tmp_path / "toy")
    rng = np.random.default_rng(6)
    pixels = {}
    for i in range(7):
        cls = CLASSES[i % 3]
        a = rng.integers(0, 256, (16, 24, 3)).astype(np.uint8)
        (tmp_path / "pics" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "pics" / cls / f"{i}.png").write_bytes(png_bytes(a))
        pixels[f"{cls}/{i}.png"] = a
    (tmp_path / "pics" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    sc.score(str(tmp_path / "toy"), str(tmp_path / "pics"), local,
             sc.ScoreOptions(replicates=20, report=False))
    run_beam("--model", str(tmp_path / "toy"), "--data", str(tmp_path / "pics"), "--out", beam,
             "--bootstrap", "20", "--batch-size", "3")
    rows = {r["image_id"]: r for r in read_csv(os.path.join(beam, "predictions_images.csv"))}
    assert sorted(rows) == sorted(pixels)
    for k, a in pixels.items():
        got = [float(rows[k][f"prob_{c}"]) for c in CLASSES]
        np.testing.assert_allclose(got, expected_mean_colour(a, w, b), atol=1e-5)
    assert same_predictions(local, beam, "predictions_images.csv", "image_id") == 7
    assert same_predictions(local, beam, "skipped.csv", "image_id") == 1
    assert json.load(open(os.path.join(local, "metrics.json"))) == \
        json.load(open(os.path.join(beam, "metrics.json")))

    # The model handler itself: probabilities and the embedding (this model's embedding
    # is the mean colour) per image, an error for the broken one, in one batch.
    names = ["a/0.png", "a/broken.png", "b/1.png"]
    code = ("import json, sys; import numpy as np; "
            "from tfmicle.score.beam import SavedModelHandler; "
            "h = SavedModelHandler(sys.argv[1] + '/1', 4); m = h.load_model(); "
            "res = h.run_inference([open(p, 'rb').read() for p in sys.argv[2:]], m); "
            "print(json.dumps([{k: np.asarray(v).tolist() for k, v in r.inference.items()} "
            "for r in res]))")
    out = subprocess.run([BEAM_PYTHON, "-c", code, str(tmp_path / "toy"),
                          *[str(tmp_path / "pics" / n) for n in names]], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(got[1]) == {"error"} and got[1]["error"]
    for n, g in zip(names[::2], got[::2]):
        a = pixels[n]
        np.testing.assert_allclose(g["embedding"], a.reshape(-1, 3).mean(0) / 255, atol=1e-6)
        np.testing.assert_allclose(g["probabilities"], expected_mean_colour(a, w, b),
                                   atol=1e-5)


@pytest.mark.skipif(_has_apache_beam(), reason="apache_beam is installed here")
def test_runner_beam_without_apache_beam_is_a_one_line_usage_error(tmp_path, capsys):
    code, _, err = run_main(sc.main, ["--runner", "beam", "--model", tmp_path / "m", "--data",
                                      tmp_path, "--out", tmp_path / "o"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'tfmicle[beam]'" in lines[0], err


def test_beam_args_without_runner_beam_is_a_usage_error(tmp_path, capsys):
    assert sc.main(["--model", str(tmp_path / "m"), "--data", str(tmp_path), "--out",
                    str(tmp_path / "o"), "--beam-args=--direct_num_workers=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--beam-args needs --runner beam" in err[0]


def test_runner_beam_on_a_tfds_split_is_a_one_line_usage_error(capsys):
    """The Beam path has no work list for a TFDS split: a user mistake (exit 2, one
    line), not a traceback."""
    from tfmicle import cli
    from tfmicle.score.source_records import TfdsSplitSource
    src = object.__new__(TfdsSplitSource)
    src.spec = "tfds:mnist (test)"
    assert cli.run("tfmicle.score", src.work_lines) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a TFDS split" in err[0] and "--runner beam" in err[0]
