"""Similar cases end to end: POST /similar and /classify?similar=k on a real exported
model (serving.toy's mean-colour SavedModel, whose embedding is the image's mean colour)
with a case index built from that model's own embeddings of a handful of images. The
server's answers are checked against a numpy nearest-neighbour computation on the mean
colours of the pixels sent; the key, stale indexes and hot reload are checked too."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest

from conftest import import_or_skip
from serving_harness import ServerProcess, encode, random_pixels
from test_serving_reload import one_line_error, run_cli, wait_for
from serving.toy import expected_mean_colour, save_mean_colour_model
from tfmicle.caseindex import store

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow

KEY = "similar-key"
LABELS = ["red", "green", "blue"]
W1 = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]], np.float32)
W2 = np.array([[-2.0, 1.0, 4.0], [1.0, -3.0, 0.5], [2.0, 2.0, -1.0]], np.float32)
B = np.zeros(3, np.float32)


def picture(seed: int) -> np.ndarray:
    """64 x 64 (a multiple of the model's 32: its mean colour is exact), tinted so the
    mean colours spread out."""
    rng = np.random.default_rng(seed)
    tint = rng.uniform(0.2, 1.0, 3)
    return (random_pixels(rng, 64, 64) * tint).astype(np.uint8)


def mean_colour(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, 3).astype(np.float64).mean(axis=0) / 255.0


def numpy_nearest(query_pixels: list[np.ndarray], ref: dict[str, list[np.ndarray]], k: int) -> list[tuple[str, float]]:
    """The reference answer: per case, the mean of unit mean-colour vectors, re-normalised;
    cosine; highest first, ties by case order."""
    def case_vec(pics):
        v = np.mean([mean_colour(p) / np.linalg.norm(mean_colour(p)) for p in pics], axis=0)
        return v / np.linalg.norm(v)

    q = case_vec(query_pixels)
    sims = [(cid, float(case_vec(pics) @ q)) for cid, pics in ref.items()]
    order = sorted(range(len(sims)), key=lambda i: (-sims[i][1], i))
    return [sims[i] for i in order[:k]]


def model_embeddings(version_dir, pixels: list[np.ndarray]) -> np.ndarray:
    """What the index tool does: the exported model's own embedding output."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return fn(images=tf.constant([encode(p) for p in pixels]))["embedding"].numpy()


def reference_cases(prefix: str, seed0: int) -> dict[str, list[np.ndarray]]:
    """Eight cases; every third has two images."""
    return {f"{prefix}{i}": [picture(seed0 + 10 * i)] + ([picture(seed0 + 10 * i + 1)] if i % 3 == 0 else [])
            for i in range(8)}


def build_for(version_dir, out, ref: dict[str, list[np.ndarray]], version: int) -> None:
    pics = [p for ps in ref.values() for p in ps]
    ids = [cid for cid, ps in ref.items() for _ in ps]
    case_ids, vectors = store.case_embeddings(model_embeddings(version_dir, pics), ids)
    labels = [LABELS[int(np.argmax(mean_colour(ref[c][0])))] for c in case_ids]
    meta = {"site": [f"site-{c}" for c in case_ids], "age": [str(40 + i) for i in range(len(case_ids))]}
    store.build_index(out, vectors, case_ids, labels, meta, store.model_fingerprint(version_dir),
                      model_version=version)


def files_of(pixels: list[np.ndarray]) -> list:
    return [("files", (f"{i}.png", encode(p), "image/png")) for i, p in enumerate(pixels)]


def served(c) -> dict:
    status = c.get("/v1/models/m").json()["model_version_status"]
    return next(s for s in status if s["state"] == "AVAILABLE")


def test_similar_cases_hot_reload_and_stale_indexes(tmp_path):
    base = tmp_path / "models" / "m"
    save_mean_colour_model(base / "1", W1, B, labels=LABELS)
    ref1 = reference_cases("v1-case", 100)
    build_for(base / "1", base / "1" / "similar", ref1, 1)
    query = [picture(7), picture(8)]

    with ServerProcess(base, "--poll-seconds", "0.2", env={"SERVING_API_KEY": KEY}, api_key=KEY) as server, \
            httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        st = served(c)["similar_index"]
        assert (st["state"], st["cases"], st["dim"]) == ("loaded", 8, 3)

        # /similar: two images of one case are one query
        r = c.post("/similar", files=files_of(query), params={"k": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        want = numpy_nearest(query, ref1, 4)
        assert (body["model_version"], body["num_images"], body["k"], body["index_cases"]) == (1, 2, 4, 8)
        assert [x["case_id"] for x in body["cases"]] == [cid for cid, _ in want]
        np.testing.assert_allclose([x["similarity"] for x in body["cases"]], [s for _, s in want], atol=1e-5)
        first = body["cases"][0]
        assert first["rank"] == 1 and first["label"] == LABELS[int(np.argmax(mean_colour(ref1[first["case_id"]][0])))]
        assert first["metadata"] == {"site": f"site-{first['case_id']}", "age": first["metadata"]["age"]}

        # /classify?similar=k: the classification and the same neighbours, JSON body this time
        b64 = [base64.b64encode(encode(p)).decode() for p in query]
        r = c.post("/classify", json={"images": b64}, params={"similar": 3, "top_k": 3})
        assert r.status_code == 200, r.text
        cls = r.json()
        got = {x["label"]: x["score"] for x in cls["images"][1]["top"]}
        np.testing.assert_allclose([got[lab] for lab in LABELS], expected_mean_colour(query[1], W1, B), atol=1e-5)
        assert [x["case_id"] for x in cls["similar"]["cases"]] == [cid for cid, _ in want[:3]]
        assert "similar" not in c.post("/classify", json={"images": b64}).json()

        # the key applies; k out of range is a 422 with {"error"}
        no_key = httpx.post(server.url + "/similar", files=files_of(query[:1]), timeout=30)
        assert no_key.status_code == 401 and set(no_key.json()) == {"error"}
        for params in ({"k": 0}, {"k": 101}):
            r = c.post("/similar", files=files_of(query[:1]), params=params)
            assert r.status_code == 422 and "k" in r.json()["error"], r.text
        r = c.post("/classify", files=files_of(query[:1]), params={"similar": 0})
        assert r.status_code == 422 and "similar" in r.json()["error"]

        # version 2 arrives with a copy of version 1's index: refused, /classify still serves
        staging = tmp_path / "staging"
        save_mean_colour_model(staging, W2, B, labels=LABELS)
        shutil.copytree(base / "1" / "similar", staging / "similar")
        shutil.move(str(staging), str(base / "2"))
        st = wait_for(lambda: (s := served(c))["version"] == "2" and s)["similar_index"]
        assert st["state"] == "refused"
        assert "version 1" in st["reason"] and "version 2" in st["reason"] and "fingerprint" in st["reason"]
        assert str(tmp_path) not in st["reason"]
        r = c.post("/similar", files=files_of(query))
        assert r.status_code == 409 and "no case index is loaded for version 2" in r.json()["error"], r.text
        r = c.post("/classify", files=files_of(query[:1]))
        assert r.status_code == 200 and r.json()["model_version"] == 2
        got = {x["label"]: x["score"] for x in r.json()["images"][0]["top"]}
        np.testing.assert_allclose([got[lab] for lab in LABELS], expected_mean_colour(query[0], W2, B), atol=1e-5)

        # its own index, built in place: picked up on the next poll, with version 2's cases
        ref2 = reference_cases("v2-case", 500)
        build_for(base / "2", base / "2" / "similar", ref2, 2)
        wait_for(lambda: served(c)["similar_index"]["state"] == "loaded")
        r = c.post("/similar", files=files_of(query), params={"k": 20})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == 2 and r.json()["k"] == 8
        assert [x["case_id"] for x in r.json()["cases"]] == [cid for cid, _ in numpy_nearest(query, ref2, 8)]
        log = server.log_text()
    assert "case index for version 2 refused" in log and "Traceback" not in log


def test_one_index_folder_limited_fields_and_a_model_without_an_index(tmp_path):
    """--similar-index INDEX (one folder) for the version that built it, --similar-fields
    without case ids; the same index is refused (and says why) for a model it was not
    built by."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingConfig

    base = tmp_path / "models" / "m"
    save_mean_colour_model(base / "1", W1, B, labels=LABELS)
    ref = reference_cases("c", 300)
    build_for(base / "1", tmp_path / "index", ref, 1)
    config = ServingConfig(model_base_path=str(base), poll_seconds=0, similar_index=str(tmp_path / "index"),
                           similar_fields="label,similarity,metadata.site")
    query = [picture(9)]
    with TestClient(create_app(config)) as c:
        r = c.post("/similar", files=files_of(query), params={"k": 2})
        assert r.status_code == 200, r.text
        want = numpy_nearest(query, ref, 2)
        cases = r.json()["cases"]
        assert [set(x) for x in cases] == [{"rank", "label", "similarity", "metadata"}] * 2
        assert [x["metadata"] for x in cases] == [{"site": f"site-{cid}"} for cid, _ in want]
        np.testing.assert_allclose([x["similarity"] for x in cases], [s for _, s in want], atol=1e-5)

    other = tmp_path / "other" / "m"
    save_mean_colour_model(other / "1", W2, B, labels=LABELS)
    config = ServingConfig(model_base_path=str(other), poll_seconds=0, similar_index=str(tmp_path / "index"))
    with TestClient(create_app(config)) as c:
        st = c.get("/v1/models/m").json()["model_version_status"][0]["similar_index"]
        assert st["state"] == "refused" and "fingerprint" in st["reason"] and str(tmp_path) not in st["reason"]
        r = c.post("/classify", files=files_of(query), params={"similar": 2})
        assert r.status_code == 409 and "built by model version 1" in r.json()["error"]
        assert c.post("/classify", files=files_of(query)).status_code == 200

    config = ServingConfig(model_base_path=str(other), poll_seconds=0)  # no index anywhere
    with TestClient(create_app(config)) as c:
        assert "similar_index" not in c.get("/v1/models/m").json()["model_version_status"][0]  # TF Serving's shape
        r = c.post("/similar", files=files_of(query))
        assert r.status_code == 409 and json.loads(r.text).keys() == {"error"}
        assert "no case index at version 1/similar" in r.json()["error"] and str(tmp_path) not in r.text


def test_similar_flags_are_checked_at_start(tmp_path):
    (tmp_path / "1").mkdir()
    assert "--similar-index" in run_cli("--help").stdout
    one_line_error(run_cli("--model-base-path", str(tmp_path), "--similar-fields", "case_id,secret"),
                   "--similar-fields 'case_id,secret': a comma list of")
    one_line_error(run_cli("--model-base-path", str(tmp_path), "--similar-index", str(tmp_path / "nothing")),
                   "is not a folder")


def test_a_large_index_is_searched_with_ivf_when_faiss_is_installed(tmp_path, monkeypatch):
    import_or_skip("faiss", "similar-ann")
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingConfig
    from tfmicle.caseindex import ann

    monkeypatch.setattr(ann, "ANN_MIN_CASES", 1)  # "large" = every index here
    base = tmp_path / "models" / "m"
    save_mean_colour_model(base / "1", W1, B, labels=LABELS)
    ref = reference_cases("c", 700)
    build_for(base / "1", base / "1" / "similar", ref, 1)
    query = [picture(11)]
    with TestClient(create_app(ServingConfig(model_base_path=str(base), poll_seconds=0))) as c:
        assert c.get("/v1/models/m").json()["model_version_status"][0]["similar_index"]["search"] == "ivf"
        r = c.post("/similar", files=files_of(query), params={"k": 8})
        assert r.status_code == 200, r.text
        # 8 cases, a few lists, all scanned: IVF must return exactly the exact answer
        assert [x["case_id"] for x in r.json()["cases"]] == [cid for cid, _ in numpy_nearest(query, ref, 8)]
