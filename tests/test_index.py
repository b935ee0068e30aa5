"""The index tool (python -m tfmicle.index) and score --similar, on the session's tiny
exported model: every stored case embedding against numpy over the SavedModel's own
``embedding`` outputs, precision@k against a numpy nearest-neighbour computation, a
mismatched index refused, the marker written last, the user mistakes in one line."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from conftest import png_bytes, run_main
from tfmicle import fileio
from tfmicle import index as index_cli
from tfmicle import model_format as mf
from tfmicle.caseindex import store
from tfmicle.data import records
from tfmicle.score import cli as score_cli

CLASSES = ["a", "b", "c"]


def numpy_cases(version_dir: str, data: str, split: str) -> dict:
    """{case id: (unit case embedding [D] float64, class name)} from serving_default's
    ``embedding`` of each image, called here directly on the encoded images:
    each image's row normalised, the mean per case, normalised again."""
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    out = {}
    for case in records.iter_cases(data, split):
        e = fn(images=tf.constant(case.images))["embedding"].numpy().astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        out[case.case_id] = (m / np.linalg.norm(m), CLASSES[case.label_class])
    return out


@pytest.fixture(scope="module")
def built(exported_model, tmp_path_factory) -> dict:
    """The index of the train split, built through the CLI, with every file write through
    fileio recorded in order."""
    out = str(tmp_path_factory.mktemp("index") / "train_index")
    writes: list[str] = []
    real_write, real_replace = fileio.write_bytes, fileio.replace

    def write_bytes(path, data):
        writes.append(os.path.basename(str(path)))
        real_write(path, data)

    def replace(src, dst):
        writes.append(os.path.basename(str(dst)))
        real_replace(src, dst)

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setattr(fileio, "write_bytes", write_bytes)
        mp.setattr(fileio, "replace", replace)
        code = index_cli.main(["--model", os.path.dirname(exported_model["path"]), "--data",
                               exported_model["run"]["data"], "--out", out, "-q"])
    assert code == 0
    return {"out": out, "writes": writes, "stdout": stdout.getvalue(),
            "model": exported_model["path"], "data": exported_model["run"]["data"]}


@pytest.mark.slow
def test_index_rows_are_the_models_case_embeddings_and_the_marker_is_written_last(built):
    index = store.read_index(built["out"])
    want = numpy_cases(built["model"], built["data"], "train")
    assert sorted(index.case_ids) == sorted(want) and index.count == 24
    for row, cid in enumerate(index.case_ids):
        np.testing.assert_allclose(index.embeddings[row], want[cid][0], atol=2e-5)
        assert index.labels[row] == want[cid][1]
    assert index.embeddings.dtype == np.float32
    assert index.fingerprint == store.model_fingerprint(built["model"])
    assert index.model_version == 1
    assert index.info["source"].endswith("(train)")
    # 24 cases of 1-3 images: 48 images; the class of case c is c % 3
    assert "24 cases (a 8, b 8, c 8) from 48 images indexed; 0 unlabelled cases left out, " \
           "0 images skipped" in built["stdout"]
    w = built["writes"]
    assert w[-1] == store.INDEX_FILE and w.count(store.INDEX_FILE) == 1
    assert {store.EMBEDDINGS_FILE, store.CASES_FILE} <= set(w[:-1])


def numpy_precision(ref: dict, queries: dict, k: int) -> tuple[dict, dict]:
    """Per query case: (precision@k, chance), by a full cosine matrix in float64, ties by
    the index's row order, the query's own case left out of its candidates."""
    ids = list(ref)
    x = np.stack([ref[c][0] for c in ids])
    labels = np.array([ref[c][1] for c in ids])
    prec, chance = {}, {}
    for q, (e, y) in queries.items():
        cand = np.array([i for i, c in enumerate(ids) if c != q])
        sims = x[cand] @ e
        top = cand[np.lexsort((cand, -sims))[:k]]
        prec[q] = float(np.mean(labels[top] == y))
        chance[q] = float(np.mean(labels[cand] == y))
    return prec, chance


@pytest.mark.slow
def test_score_similar_precision_at_k_equals_numpy_nearest_neighbours(built, tmp_path, capsys):
    out = tmp_path / "scored"
    k = 3
    code, _, err = run_main(score_cli.main, [
        "--model", built["model"], "--data", built["data"], "--split", "test",
        "--compare", built["data"], "--compare-split", "train", "--out", out,
        "--similar", built["out"], "--similar-k", k, "--bootstrap", 50, "-q"], capsys)
    assert code == 0, err
    index = store.read_index(built["out"])
    # the reference as the index orders it (ties go to the lower row)
    want_ref = numpy_cases(built["model"], built["data"], "train")
    ref = {c: want_ref[c] for c in index.case_ids}
    # the fixture's splits name their cases alike (case0000...) with the same classes, so
    # every query, test or train, has its own case id in the index: the guard drops it
    for split, metrics_file, self_excluded in (("test", out / "metrics.json", 9),
                                               ("train", out / "compare" / "metrics.json", 24)):
        m = json.load(open(metrics_file))["similar_cases"]
        queries = numpy_cases(built["model"], built["data"], split)
        prec, chance = numpy_precision(ref, queries, k)
        assert m["k"] == k and m["queries"] == len(queries) and m["index_cases"] == 24
        assert m["excluded_same_case"] == self_excluded
        assert m["precision_at_k"] == pytest.approx(np.mean(list(prec.values())), abs=1e-9)
        assert m["chance"] == pytest.approx(np.mean(list(chance.values())), abs=1e-9)
        low, high = m["precision_at_k_ci"]
        assert low <= m["precision_at_k"] <= high
        by_class = []
        for c in CLASSES:
            mine = [q for q, (_, y) in queries.items() if y == c]
            by_class.append(np.mean([prec[q] for q in mine]))
            v = m["per_class"][c]
            assert v["queries"] == len(mine) and v["reference_cases"] == 8
            assert v["precision_at_k"] == pytest.approx(np.mean([prec[q] for q in mine]), abs=1e-9)
            # 8 of 24 reference cases per class, less the query's own: 7 of 23
            assert v["chance"] == pytest.approx(7 / 23)
        assert m["precision_at_k_macro"] == pytest.approx(np.mean(by_class), abs=1e-9)
        assert m["chance_macro"] == pytest.approx(7 / 23)
    report = (out / "report.md").read_text()
    assert f"| class | queries | reference cases | precision@{k} (95 % CI) | chance |" in report
    assert "A reference case with the query's case id is excluded" in report


def other_model(version_dir: str, base: str) -> str:
    """A copy of the model as version 1 of another base whose saved_model.pb differs in a
    field that changes nothing it computes (so its fingerprint differs), published."""
    dst = os.path.join(base, "1")
    shutil.copytree(version_dir, dst)
    os.remove(os.path.join(dst, mf.PUBLISHED_FILE))
    pb = os.path.join(dst, "saved_model.pb")
    sm = saved_model_pb2.SavedModel.FromString(open(pb, "rb").read())
    sm.meta_graphs[0].meta_info_def.meta_graph_version += "-copy"
    with open(pb, "wb") as f:
        f.write(sm.SerializeToString())
    mf.publish(dst)
    return dst


@pytest.mark.slow
def test_an_index_of_another_model_is_refused_in_one_line(built, tmp_path, capsys):
    other = other_model(built["model"], str(tmp_path / "other"))
    assert store.model_fingerprint(other) != store.model_fingerprint(built["model"])
    code, out, err = run_main(score_cli.main, [
        "--model", other, "--data", built["data"], "--out", tmp_path / "s",
        "--similar", built["out"], "-q"], capsys)
    fp = store.short(store.model_fingerprint(built["model"]))
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "s").exists()
    assert "was built by model version 1" in err and fp in err and "rebuild the index" in err
    # a folder that is no index at all
    code, _, err = run_main(score_cli.main, [
        "--model", built["model"], "--data", built["data"], "--out", tmp_path / "s2",
        "--similar", tmp_path, "-q"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no index.json" in err


def test_cli_mistakes_found_before_the_model_loads(tiny_records, tmp_path, capsys):
    # the model is never opened: these are refused first, so a typo costs no wait
    base = ["--model", tmp_path / "no_model", "--data", tiny_records, "--out", tmp_path / "i"]
    code, _, err = run_main(index_cli.main, base + ["--meta-cols", "sex"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--meta-cols sex: no such metadata column" in err
    code, _, err = run_main(index_cli.main, base + ["--dtype", "int8"], capsys)
    assert code == 2 and "invalid choice" in err
    score = base + ["--similar", tmp_path / "index"]
    code, _, err = run_main(score_cli.main, score + ["--similar-k", 0], capsys)
    assert code == 2 and err.count("\n") == 1 and "--similar-k must be >= 1" in err
    code, _, err = run_main(score_cli.main, score + ["--runner", "beam"], capsys)
    assert code == 2 and "--similar needs --runner local" in err
    assert not (tmp_path / "i").exists()


@pytest.mark.slow
def test_cli_mistakes_after_the_model_loads(built, tmp_path, capsys):
    code, _, err = run_main(index_cli.main, ["--model", built["model"], "--data", built["data"],
                                             "--split", "nope", "--out", tmp_path / "i", "-q"],
                            capsys)
    assert code == 2 and err.count("\n") == 1 and "split 'nope' not in" in err
    # a model whose serving signature has no embedding output
    plain = tmp_path / "plain" / "1"

    class Probs(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images):
            return {"probabilities": tf.fill([tf.shape(images)[0], 3], 1 / 3)}
    m = Probs()
    tf.saved_model.save(m, str(plain), signatures={"serving_default": m.serve})
    mf.publish(str(plain))
    code, _, err = run_main(index_cli.main, ["--model", plain, "--data", built["data"],
                                             "--out", tmp_path / "i", "-q"], capsys)
    assert code == 2 and err.count("\n") == 1 and "has no 'embedding' output" in err
    # a CSV manifest without labels: an index holds confirmed cases
    png = png_bytes(np.full((32, 32, 3), 90, np.uint8))
    (tmp_path / "x.png").write_bytes(png)
    (tmp_path / "nolabels.csv").write_text("image,case_id\nx.png,c1\n")
    code, _, err = run_main(index_cli.main, ["--model", built["model"], "--data",
                                             tmp_path / "nolabels.csv", "--out", tmp_path / "i", "-q"],
                            capsys)
    assert code == 2 and err.count("\n") == 1 and "has no labelled case" in err
    assert not (tmp_path / "i" / store.INDEX_FILE).exists()


@pytest.mark.slow
def test_csv_reference_on_an_object_store_keeps_metadata_and_counts_what_it_leaves_out(
        built, tmp_path, capsys):
    rng = np.random.default_rng(3)
    for name in ("p1.png", "p2.png", "p3.png", "p4.png"):
        (tmp_path / name).write_bytes(png_bytes(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    rows = [("p1.png", "c1", "a", "back"), ("p2.png", "c1", "a", "arm"),
            ("p3.png", "c2", "b", "back"), ("p4.png", "c3", "", "leg"),
            ("broken.png", "c4", "c", "back"), ("missing.png", "c5", "c", "face")]
    with open(tmp_path / "ref.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "case_id", "label", "site"])
        w.writerows(rows)
    out = f"ram://{tmp_path.name}/idx"   # an object-store path: every write through fileio
    code, stdout, err = run_main(index_cli.main, [
        "--model", built["model"], "--data", tmp_path / "ref.csv", "--out", out,
        "--meta-cols", "site", "--dtype", "float16", "-q"], capsys)
    assert code == 0, err
    assert "2 cases (a 1, b 1, c 0) from 4 images indexed; 1 unlabelled cases left out, " \
           "2 images skipped" in stdout
    index = store.read_index(out)
    assert index.case_ids == ["c1", "c2"] and index.labels == ["a", "b"]
    assert index.metadata == {"site": ["back | arm", "back"]}
    assert index.embeddings.dtype == np.float16
    fn = tf.saved_model.load(built["model"]).signatures["serving_default"]
    e = fn(images=tf.constant([(tmp_path / p).read_bytes() for p in ("p1.png", "p2.png")]))
    e = e["embedding"].numpy().astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    m = e.mean(0) / np.linalg.norm(e.mean(0))
    np.testing.assert_allclose(index.embeddings[0].astype(np.float64), m, atol=2e-3)
