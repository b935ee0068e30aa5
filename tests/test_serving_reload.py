"""Hot reload and the command line, against real `python -m serving` processes."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import run_main
from serving_harness import REPO_ROOT, ServerProcess, encode, random_pixels
from serving.toy import expected_mean_colour, save_cnn_model, save_mean_colour_model
from tfmicle.model_format import PUBLISHED_FILE, publish

httpx = pytest.importorskip("httpx")

W1 = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]], np.float32)
B1 = np.zeros(3, np.float32)
W2 = np.array([[-2.0, 1.0, 4.0], [1.0, -3.0, 0.5], [2.0, 2.0, -1.0]], np.float32)
B2 = np.array([0.3, -0.2, 0.1], np.float32)
LABELS = ["r", "g", "b"]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def served_version(c) -> int:
    status = c.get("/v1/models/m").json()["model_version_status"]
    return int(next(s["version"] for s in status if s["state"] == "AVAILABLE"))


@pytest.mark.slow
def test_new_versions_are_picked_up_and_broken_ones_refused(tmp_path):
    base, staging = tmp_path / "models" / "m", tmp_path / "staging"
    save_mean_colour_model(base / "1", W1, B1, labels=LABELS)
    pixels = random_pixels(np.random.default_rng(3), 64, 64)
    image = base64.b64encode(encode(pixels)).decode()
    expected = {1: expected_mean_colour(pixels, W1, B1), 2: expected_mean_colour(pixels, W2, B2)}

    with ServerProcess(base, "--poll-seconds", "0.2") as server, httpx.Client(base_url=server.url, timeout=30) as c:
        # Traffic all the way through the swaps: no request may fail.
        seen: list[tuple[int, int, dict]] = []
        stop = threading.Event()

        def traffic():
            with httpx.Client(base_url=server.url, timeout=30) as tc:
                while not stop.is_set():
                    r = tc.post("/classify", json={"images": [image]}, params={"top_k": 3})
                    body = r.json() if r.status_code == 200 else {}
                    top = {x["label"]: x["score"] for x in body.get("images", [{}])[0].get("top", [])}
                    seen.append((r.status_code, body.get("model_version", -1), top))
                    time.sleep(0.02)

        t = threading.Thread(target=traffic)
        t.start()
        try:
            assert served_version(c) == 1
            # v2: a single output under another name, no labels.txt -> labels are indices
            save_mean_colour_model(staging / "2", W2, B2, output_name="scores")
            os.rename(staging / "2", base / "2")
            wait_for(lambda: served_version(c) == 2, what="version 2")
            r = c.post("/v1/models/m:predict", json={"instances": [{"b64": image}]})
            np.testing.assert_allclose(r.json()["predictions"][0], expected[2], atol=1e-5)
            assert c.get("/v2/models/m").json()["outputs"][0]["name"] == "scores"

            # v3: corrupt -> refused, v2 keeps serving
            (base / "3").mkdir()
            (base / "3" / "saved_model.pb").write_bytes(b"\x08\x01 this is not a SavedModel" * 20)
            publish(base / "3")  # published, so tried (and refused), not just ignored
            wait_for(lambda: 'serving_model_loads_total{model="m",result="failure"} 1.0' in c.get("/metrics").text,
                     what="the refusal of version 3")
            time.sleep(0.5)  # a few more polls: it must not be retried or swapped in
            assert served_version(c) == 2
            states = {s["version"]: s["state"] for s in c.get("/v1/models/m").json()["model_version_status"]}
            assert states == {"2": "AVAILABLE", "3": "END"}
            r = c.post("/v1/models/m:predict", json={"instances": [{"b64": image}]})
            np.testing.assert_allclose(r.json()["predictions"][0], expected[2], atol=1e-5)

            # v4: an exported Keras model is served next
            save_cnn_model(staging / "4", num_classes=3, size=32, width=4, labels=["x", "y", "z"])
            os.rename(staging / "4", base / "4")
            wait_for(lambda: served_version(c) == 4, what="version 4")
            import tensorflow as tf

            reference = tf.saved_model.load(str(base / "4")).signatures["serving_default"](
                images=tf.constant([encode(pixels)]))["probabilities"].numpy()[0]
            r = c.post("/v2/models/m/infer", json={"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [image]}]})
            np.testing.assert_allclose(r.json()["outputs"][0]["data"], reference, atol=1e-5)
            assert r.json()["model_version"] == "4"
            time.sleep(0.3)
        finally:
            stop.set()
            t.join()
        log = server.log_text()

    assert seen and all(status == 200 for status, _, _ in seen), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v, _ in seen]
    assert versions == sorted(versions) and {1, 2, 4} <= set(versions)
    for _, v, top in seen:  # every answer matches the version that computed it
        if v == 1:
            np.testing.assert_allclose([top[x] for x in LABELS], expected[1], atol=1e-5)
        elif v == 2:
            np.testing.assert_allclose([top[str(i)] for i in range(3)], expected[2], atol=1e-5)
    assert re.search(r"refused m version 3, still serving version 2", log)
    assert "Traceback" not in log


def copy_slowly(src, dst, marker_first: bool, pause: float) -> list[str]:
    """Copies a version folder one file at a time, ``pause`` seconds apart (slower than
    the server's polls): labels.txt after the model files, the marker last or first."""
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    labels = os.path.join("assets", "labels.txt")
    rest = [f for f in files if f not in (labels, PUBLISHED_FILE)]
    order = [*rest, labels, PUBLISHED_FILE] if not marker_first else [PUBLISHED_FILE, *rest, labels]
    for f in order:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / f, dst / f)
        yield f
        time.sleep(pause)


@pytest.mark.slow
def test_a_version_copied_file_by_file_is_served_only_once_published(tmp_path):
    """The publish rule: a folder copied in file by file (as rsync or a bucket sync does) is
    served only when complete, so its labels are there; the marker's file sizes make the
    rule hold even when the marker happens to be copied first."""
    base, staging = tmp_path / "models" / "m", tmp_path / "staging"
    save_mean_colour_model(base / "1", W1, B1, labels=LABELS)
    save_mean_colour_model(staging / "2", W2, B2, labels=["x2", "y2", "z2"])
    save_mean_colour_model(staging / "3", W1, B2, labels=["x3", "y3", "z3"])
    pixels = random_pixels(np.random.default_rng(5), 64, 64)
    image = base64.b64encode(encode(pixels)).decode()

    def labelled_scores(c) -> tuple[int, dict]:
        body = c.post("/classify", json={"images": [image]}, params={"top_k": 3}).json()
        return body["model_version"], {x["label"]: x["score"] for x in body["images"][0]["top"]}

    with ServerProcess(base, "--poll-seconds", "0.2") as server, httpx.Client(base_url=server.url, timeout=30) as c:
        for version, marker_first, want_before in ((2, False, 1), (3, True, 2)):
            for copied in copy_slowly(staging / str(version), base / str(version), marker_first, pause=0.6):
                if copied != PUBLISHED_FILE or marker_first:
                    assert served_version(c) == want_before, (version, copied)
            wait_for(lambda: served_version(c) == version, what=f"version {version}")
            served, scores = labelled_scores(c)
            weights, bias = {2: (W2, B2), 3: (W1, B2)}[version]
            names = [f"{x}{version}" for x in "xyz"]
            assert served == version and set(scores) == set(names), scores
            np.testing.assert_allclose([scores[n] for n in names], expected_mean_colour(pixels, weights, bias),
                                       atol=1e-5)
        log = server.log_text()
    assert re.search(rf"ignoring m version 2 until it is published: no {PUBLISHED_FILE}", log), log[-2000:]
    assert re.search(r"ignoring m version 3 until it is published: .* is missing \(copy in progress", log), log[-2000:]
    assert "Traceback" not in log


# -- command line ----------------------------------------------------------------------------------------
def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "serving", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(REPO_ROOT))


@pytest.mark.subprocess
def test_cli_help():
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--model-base-path", "--max-batch-size", "--batch-timeout-ms", "--max-body-bytes", "--max-images",
                 "--max-pixels", "--api-key", "--workers", "--poll-seconds", "--settle-seconds", "--require-published"):
        assert flag in r.stdout


def one_line_error(r: subprocess.CompletedProcess, words: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr


def test_cli_usage_mistakes_exit_2_with_one_line(tmp_path, capsys):
    from serving.__main__ import main

    def in_process(*args) -> subprocess.CompletedProcess:
        code, out, err = run_main(main, args, capsys)
        return subprocess.CompletedProcess(args, code, out, err)
    one_line_error(in_process(), "--model-base-path")
    one_line_error(in_process("--model-base-path", str(tmp_path / "missing")), "is not a folder")
    one_line_error(in_process("--model-base-path", str(tmp_path)), "no integer version folders")
    (tmp_path / "1").mkdir()
    one_line_error(in_process("--model-base-path", str(tmp_path), "--max-batch-size", "many"), "invalid int")
    one_line_error(in_process("--model-base-path", str(tmp_path), "--max-images", "0"), "--max-images must be >= 1")
    one_line_error(in_process("--model-base-path", str(tmp_path), "--no-such-flag"), "unrecognized arguments")


@pytest.mark.server
def test_cli_busy_port_is_one_line_exit_2(tmp_path):
    (tmp_path / "1").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line_error(run_cli("--model-base-path", str(tmp_path), "--port", str(port)), "cannot listen")


@pytest.mark.slow
def test_cli_no_loadable_version_exits_2(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"junk")
    r = run_cli("--model-base-path", str(tmp_path))  # not published: not even tried
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("serving: error: no loadable version")
    assert f"no {PUBLISHED_FILE}" in r.stderr.strip().splitlines()[-1]
    publish(tmp_path / "1")
    r = run_cli("--model-base-path", str(tmp_path))  # published but broken: tried and refused
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("serving: error: no loadable version")
    assert "cannot load SavedModel" in r.stderr.strip().splitlines()[-1]
