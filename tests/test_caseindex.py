"""tfmicle.caseindex: the index folder (format, publish rule, fingerprint, case
aggregation) and exact chunked cosine search, each checked against plain numpy
references written here (a full similarity matrix, a per-case loop, hashlib)."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from conftest import import_or_skip
from tfmicle import cli, fileio
from tfmicle.caseindex import store
from tfmicle.caseindex.search import cosine_top_k


def reference_top_k(index: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full [Q, N] cosine matrix in float64, sorted by (-similarity, row)."""
    x = np.asarray(index, np.float64)
    q = np.asarray(queries, np.float64)
    xn = np.linalg.norm(x, axis=1, keepdims=True)
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    x = np.where(xn > 0, x / np.where(xn > 0, xn, 1), 0)
    q = np.where(qn > 0, q / np.where(qn > 0, qn, 1), 0)
    sims = q @ x.T
    rows = np.arange(x.shape[0])
    order = np.stack([np.lexsort((rows, -s))[:k] for s in sims])
    return order, np.take_along_axis(sims, order, axis=1)


def unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- search

@pytest.mark.parametrize("chunk_rows", [1, 7, 64, None])
def test_exact_search_matches_the_full_matrix(chunk_rows):
    rng = np.random.default_rng(0)
    index, queries = unit(rng, 500, 16), rng.normal(size=(6, 16)) * 3  # queries of any norm
    rows, sims = cosine_top_k(index, queries, 10, chunk_rows=chunk_rows)
    ref_rows, ref_sims = reference_top_k(index, queries, 10)
    assert rows.shape == sims.shape == (6, 10) and rows.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_k_above_n_returns_every_row_once():
    rng = np.random.default_rng(1)
    index, q = unit(rng, 5, 8), rng.normal(size=(2, 8))
    rows, sims = cosine_top_k(index, q, 50, chunk_rows=2)
    ref_rows, ref_sims = reference_top_k(index, q, 5)
    assert rows.shape == (2, 5)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_ties_go_to_the_lower_row_across_chunks():
    # axis vectors: every similarity is exactly 1 or 0, so the ties are real
    eye = np.eye(4, dtype=np.float32)
    index = eye[[0, 1, 0, 2, 0, 3, 1]]  # rows 0, 2, 4 equal e0; rows 1, 6 equal e1
    rows, sims = cosine_top_k(index, eye[[0]] * 2.5, 5, chunk_rows=3)
    assert rows.tolist() == [[0, 2, 4, 1, 3]]
    assert sims.tolist() == [[1, 1, 1, 0, 0]]
    rows, _ = cosine_top_k(index, eye[[1]], 2, chunk_rows=2)
    assert rows.tolist() == [[1, 6]]


def test_duplicate_random_vectors_come_out_together_in_row_order():
    rng = np.random.default_rng(2)
    base = unit(rng, 50, 32)
    index = np.concatenate([base, base[:10]])  # rows 50..59 repeat rows 0..9
    q = base[3:4] + 0.01 * rng.normal(size=(1, 32))
    rows, sims = cosine_top_k(index, q, 2, chunk_rows=16)
    assert rows.tolist() == [[3, 53]]
    assert sims[0, 0] == pytest.approx(sims[0, 1], abs=1e-6)


def test_a_zero_query_gets_the_first_rows_at_similarity_zero_and_a_zero_row_scores_zero():
    rng = np.random.default_rng(3)
    index = unit(rng, 20, 8)
    index[4] = 0
    rows, sims = cosine_top_k(index, np.zeros((1, 8)), 3, chunk_rows=6)
    assert rows.tolist() == [[0, 1, 2]] and sims.tolist() == [[0, 0, 0]]
    rows, sims = cosine_top_k(index, -index[[0]] + 0, 20)  # the zero row sits between + and -
    assert sims[0, rows[0].tolist().index(4)] == 0


def test_search_refuses_bad_arguments():
    index = np.eye(3, dtype=np.float32)
    for args, words in [((index, np.ones((1, 3)), 0), "k must be"), ((index, np.ones((1, 4)), 1), "one D"),
                        ((index, np.array([[np.nan, 1, 1]]), 1), "NaN")]:
        with pytest.raises(ValueError, match=words):
            cosine_top_k(*args)


def test_float16_index_finds_what_float32_finds():
    rng = np.random.default_rng(4)
    index, q = unit(rng, 2000, 64), rng.normal(size=(20, 64))
    r32, s32 = cosine_top_k(index, q, 10)
    r16, s16 = cosine_top_k(index.astype(np.float16), q, 10, chunk_rows=300)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r32, r16)])
    assert recall >= 0.95, recall
    np.testing.assert_allclose(s16, s32, atol=2e-3)


# --------------------------------------------------------------------------- cases

def test_case_embeddings_average_unit_vectors_per_case():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 4)) * rng.uniform(0.1, 10, size=(7, 1))  # norms differ a lot
    ids = ["b", "a", "b", "c", "a", "b", "c"]
    got_ids, got = store.case_embeddings(x, ids)
    assert got_ids == ["b", "a", "c"]
    for cid, row in zip(got_ids, got):
        members = [x[i] / np.linalg.norm(x[i]) for i in range(7) if ids[i] == cid]
        mean = np.mean(members, axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)


# --------------------------------------------------------------------------- the folder

def make_index(out, n=6, d=5, seed=0, dtype="float32", fingerprint="sha256:" + "ab" * 32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    ids = [f"case{i}" for i in range(n)]
    labels = ["nevus" if i % 2 else "melanoma" for i in range(n)]
    meta = {"site": [f"site{i % 3}" for i in range(n)], "age": [str(30 + i) for i in range(n)]}
    store.build_index(out, x, ids, labels, meta, fingerprint, model_version=3, dtype=dtype, source="unit test")
    return x, ids, labels, meta


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_index_round_trip_with_the_marker_last(tmp_path, dtype):
    out = tmp_path / "index"
    x, ids, labels, meta = make_index(out, dtype=dtype)
    idx = store.read_index(out)
    assert (idx.count, idx.dim, idx.embeddings.dtype.name) == (6, 5, dtype)
    want = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(idx.embeddings.astype(np.float64), want, atol=1e-3 if dtype == "float16" else 1e-6)
    assert (idx.case_ids, idx.labels, idx.metadata) == (ids, labels, meta)
    assert idx.model_version == 3 and idx.fingerprint == "sha256:" + "ab" * 32
    info = json.loads((out / store.INDEX_FILE).read_text())
    assert info["files"] == {f: os.path.getsize(out / f) for f in (store.EMBEDDINGS_FILE, store.CASES_FILE)}
    # the marker is the last file written
    assert max(os.listdir(out), key=lambda f: os.stat(out / f).st_mtime_ns) == store.INDEX_FILE


def test_reader_refuses_an_index_without_its_marker_or_half_copied(tmp_path):
    out = tmp_path / "index"
    make_index(out)
    marker = (out / store.INDEX_FILE).read_text()
    (out / store.INDEX_FILE).unlink()
    with pytest.raises(store.IndexMissingError, match="no index.json"):
        store.read_index(out)
    (out / store.INDEX_FILE).write_text(marker)
    with open(out / store.CASES_FILE, "ab") as f:
        f.write(b" ")
    with pytest.raises(store.IndexIncompleteError, match="cases.json has .* bytes"):
        store.read_index(out)
    (out / store.CASES_FILE).unlink()
    with pytest.raises(store.IndexIncompleteError, match="cases.json, listed in index.json, is missing"):
        store.read_index(out)
    with pytest.raises(store.IndexMissingError):
        store.read_index(tmp_path / "nothing")


def test_a_rebuild_that_fails_half_way_leaves_no_marker(tmp_path, monkeypatch):
    out = tmp_path / "index"
    make_index(out)
    real = fileio.write_text

    def fail_on_cases(path, text):
        if str(path).endswith(store.CASES_FILE):
            raise OSError("disk full")
        real(path, text)

    monkeypatch.setattr(fileio, "write_text", fail_on_cases)
    with pytest.raises(OSError):
        make_index(out, n=9, seed=1)
    with pytest.raises(store.IndexMissingError):
        store.read_index(out)


def test_builder_refuses_inconsistent_columns(tmp_path):
    x = np.ones((3, 2))
    for kwargs, words in [(dict(case_ids=["a", "b"]), "3 embeddings but 2 case ids"),
                          (dict(case_ids=["a", "a", "b"]), "case ids repeat"),
                          (dict(metadata={"site": ["x"]}), "'site' has 1 values"),
                          (dict(embeddings=np.array([[1, np.nan]] * 3)), "NaN"),
                          (dict(dtype="int8"), "dtype")]:
        args = dict(out=tmp_path / "i", embeddings=x, case_ids=["a", "b", "c"], labels=["l"] * 3, metadata={},
                    fingerprint="f")
        args.update(kwargs)
        with pytest.raises(ValueError, match=words):
            store.build_index(**args)


def fake_saved_model(folder, graph: bytes, index: bytes):
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(graph)
    (folder / "variables" / "variables.index").write_bytes(index)
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights that are not read")


def test_fingerprint_hashes_the_graph_and_the_variables_index(tmp_path):
    fake_saved_model(tmp_path / "m1", b"graph", b"crc of weights 1")
    fake_saved_model(tmp_path / "m2", b"graph", b"crc of weights 2")
    want = hashlib.sha256(b"saved_model.pb\x005\x00graph" + b"variables/variables.index\x0016\x00crc of weights 1")
    assert store.model_fingerprint(tmp_path / "m1") == "sha256:" + want.hexdigest()
    assert store.model_fingerprint(tmp_path / "m1") != store.model_fingerprint(tmp_path / "m2")
    with pytest.raises(store.CaseIndexError, match="no variables/variables.index"):
        (tmp_path / "m3").mkdir()
        (tmp_path / "m3" / "saved_model.pb").write_bytes(b"g")
        store.model_fingerprint(tmp_path / "m3")


def test_check_matches_refuses_another_model_in_one_line_naming_both(tmp_path):
    fake_saved_model(tmp_path / "1", b"graph", b"weights one")
    fake_saved_model(tmp_path / "2", b"graph", b"weights two")
    fp1, fp2 = store.model_fingerprint(tmp_path / "1"), store.model_fingerprint(tmp_path / "2")
    make_index(tmp_path / "index", fingerprint=fp1)
    idx = store.read_index(tmp_path / "index")
    store.check_matches(idx, tmp_path / "1", 1)
    with pytest.raises(store.IndexMismatchError) as e:
        store.check_matches(idx, tmp_path / "2", 2)
    msg = str(e.value)
    assert "\n" not in msg and "version 3" in msg and "version 2" in msg
    assert fp1[7:19] in msg and fp2[7:19] in msg
    assert issubclass(store.IndexMismatchError, cli.UsageError)
    assert issubclass(store.IndexMissingError, cli.UsageError)
    assert issubclass(store.IndexIncompleteError, cli.UsageError)


@pytest.mark.slow  # imports TensorFlow for ram://
def test_index_on_an_object_store_path():
    out = "ram://caseindex-test/index"
    x, ids, labels, meta = make_index(out, dtype="float16")
    idx = store.read_index(out)
    assert (idx.case_ids, idx.labels, idx.metadata) == (ids, labels, meta)
    assert store.marker_stamp(out) is not None
    fileio.remove(fileio.join(out, store.INDEX_FILE))
    with pytest.raises(store.IndexMissingError):
        store.read_index(out)


def clustered(rng, n, d, centres):
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.8, size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_finds_most_exact_neighbours_and_reports_exact_similarities():
    import_or_skip("faiss", "similar-ann")
    from tfmicle.caseindex.ann import IvfIndex

    rng = np.random.default_rng(6)
    centres = rng.normal(size=(50, 32))
    index, q = clustered(rng, 5000, 32, centres), clustered(rng, 40, 32, centres)
    rows, sims = IvfIndex(index, nprobe=16).search(q, 10)
    ref_rows, ref_sims = reference_top_k(index, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, ref_rows)])
    assert recall >= 0.9, recall
    exact = np.einsum("qd,qkd->qk", q.astype(np.float64), index[rows].astype(np.float64))
    np.testing.assert_allclose(sims, exact, atol=1e-5)  # re-scored, not faiss's own numbers
    assert np.all(np.diff(sims, axis=1) <= 0)


def test_an_index_inside_a_model_version_is_not_part_of_its_publish_marker(tmp_path):
    """A rebuilt <version>/similar/ must not turn a published model version into a half copy."""
    from tfmicle import model_format

    fake_saved_model(tmp_path / "1", b"graph", b"weights")
    make_index(tmp_path / "1" / "similar")
    model_format.publish(tmp_path / "1")
    listed = json.loads((tmp_path / "1" / model_format.PUBLISHED_FILE).read_text())["files"]
    assert sorted(listed) == ["saved_model.pb", "variables/variables.data-00000-of-00001",
                              "variables/variables.index"]
    make_index(tmp_path / "1" / "similar", n=20, seed=3)  # rebuilt: other sizes
    assert model_format.unpublished_reason(tmp_path / "1") is None
