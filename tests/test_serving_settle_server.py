"""A TF Serving repository against real `python -m serving` processes: version folders
without published.json are served by the settle rule (a short --settle-seconds keeps the
tests quick), never half-copied; the versions not served are in the model status and
/metrics; --require-published keeps the strict rule."""

from __future__ import annotations

import base64
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serving_harness import ServerProcess, encode, random_pixels
from serving.toy import expected_mean_colour, save_mean_colour_model
from test_serving_reload import B1, B2, LABELS, W1, W2, run_cli, served_version, wait_for
from tfmicle.model_format import PUBLISHED_FILE

httpx = pytest.importorskip("httpx")

SETTLE = "2"  # seconds; the copies below pause 0.4 s between files, well inside it


def tf_serving_version(folder: Path, weights, bias, labels=None) -> Path:
    """A version folder as TF Serving tools leave it: no publish marker."""
    save_mean_colour_model(folder, weights, bias, labels=labels)
    (folder / PUBLISHED_FILE).unlink()
    return folder


def junk_saved_model(folder: Path) -> Path:
    """Every part a SavedModel needs, none of them loadable."""
    for rel in ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"\x08\x01 this is not a SavedModel" * 20)
    return folder


def status(c) -> dict[str, tuple[str, str]]:
    return {s["version"]: (s["state"], s["status"]["error_message"])
            for s in c.get("/v1/models/m").json()["model_version_status"]}


def version_gauges(c) -> dict[str, float]:
    text = c.get("/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(r'serving_model_versions\{model="m",state="(\w+)"\} (\S+)', text)}


@pytest.mark.slow
def test_a_tf_serving_repository_is_served_and_a_slow_copy_only_once_complete(tmp_path):
    base, staging = tmp_path / "models" / "m", tmp_path / "staging"
    tf_serving_version(base / "1", W1, B1, labels=LABELS)
    tf_serving_version(staging / "2", W2, B2, labels=["x2", "y2", "z2"])
    pixels = random_pixels(np.random.default_rng(7), 64, 64)
    image = base64.b64encode(encode(pixels)).decode()

    with ServerProcess(base, "--poll-seconds", "0.2", "--settle-seconds", SETTLE) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        assert served_version(c) == 1
        assert version_gauges(c) == {"served": 1.0, "waiting": 0.0, "refused": 0.0}
        finished: list[float] = []

        def copy_slowly() -> None:  # file by file, labels.txt last, as a slow cp or rsync would
            src, dst = staging / "2", base / "2"
            files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
            labels = str(Path("assets") / "labels.txt")
            for f in [*(f for f in files if f != labels), labels]:
                (dst / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / f, dst / f)
                if f == labels:
                    finished.append(time.monotonic())
                else:
                    time.sleep(0.4)

        copier = threading.Thread(target=copy_slowly)
        copier.start()
        seen, statuses, gauges = [], [], []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                body = c.post("/classify", json={"images": [image]}, params={"top_k": 3}).json()
                seen.append((time.monotonic(), body["model_version"],
                             {x["label"]: x["score"] for x in body["images"][0]["top"]}))
                statuses.append(status(c))
                gauges.append(version_gauges(c))
                if body["model_version"] == 2:
                    break
                time.sleep(0.05)
        finally:
            copier.join()
        log = server.log_text()

    assert finished and seen[-1][1] == 2, seen[-1]
    for received, version, scores in seen:
        if received < finished[0]:
            assert version == 1  # never a half-copied folder
        if version == 2:  # served with its labels, and not before the window after the last file
            assert set(scores) == {"x2", "y2", "z2"} and received >= finished[0] + float(SETTLE)
            np.testing.assert_allclose([scores[n] for n in ("x2", "y2", "z2")],
                                       expected_mean_colour(pixels, W2, B2), atol=1e-5)
    states = [s["2"][0] for s in statuses if "2" in s]  # waiting, then served (never refused)
    assert states[0] == "START" and states == sorted(states, key=["START", "AVAILABLE"].index), states
    waits = [s["2"][1] for s in statuses if s.get("2", ("",))[0] == "START"]
    assert any(why.startswith(f"no {PUBLISHED_FILE}; served once its files have not changed") for why in waits)
    assert {"served": 1.0, "waiting": 1.0, "refused": 0.0} in gauges
    for v in (1, 2):  # the advice, once per version served without a marker
        assert len(re.findall(rf"loading m version {v} without {PUBLISHED_FILE}: its files have not changed "
                              rf"for 2 s .* the marker is the safe way to publish", log)) == 1, log[-3000:]
    assert re.search(rf"ignoring m version 2 until it is published: no {PUBLISHED_FILE}", log)
    assert "Traceback" not in log


@pytest.mark.slow
def test_unserved_versions_are_in_the_status_and_metrics_and_a_broken_one_is_refused(tmp_path):
    base = tmp_path / "m"
    tf_serving_version(base / "1", W1, B1, labels=LABELS)
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"\x08")  # variables never came: not complete
    junk_saved_model(base / "3")
    pixels = random_pixels(np.random.default_rng(8), 64, 64)
    image = base64.b64encode(encode(pixels)).decode()

    with ServerProcess(base, "--poll-seconds", "0.2", "--settle-seconds", "1") as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        assert served_version(c) == 1
        states = status(c)
        assert set(states) == {"1", "2", "3"}
        assert states["1"] == ("AVAILABLE", "")
        assert states["2"] == ("START", f"no {PUBLISHED_FILE}, and not a whole SavedModel: no variables/")
        assert states["3"][0] == "END"
        assert states["3"][1].startswith("failed to load: cannot load SavedModel from version 3:")
        assert version_gauges(c) == {"served": 1.0, "waiting": 1.0, "refused": 1.0}

        junk_saved_model(base / "4")  # while serving: refused once settled, version 1 keeps serving
        wait_for(lambda: version_gauges(c)["refused"] == 2.0, what="the refusal of version 4")
        time.sleep(0.6)  # more polls: not retried, not swapped in
        assert served_version(c) == 1 and status(c)["4"][0] == "END"
        assert str(tmp_path) not in c.get("/v1/models/m").text  # the status names versions, not folders
        r = c.post("/v1/models/m:predict", json={"instances": [{"b64": image}]})
        np.testing.assert_allclose(r.json()["predictions"][0], expected_mean_colour(pixels, W1, B1), atol=1e-5)
        log = server.log_text()
    assert re.search(r"cannot load m version 3: cannot load SavedModel", log)
    assert re.search(r"refused m version 4, still serving version 1: cannot load SavedModel", log)
    assert len(re.findall(r"refused m version 4", log)) == 1
    assert "Traceback" not in log


@pytest.mark.slow
def test_require_published_serves_marked_versions_only(tmp_path):
    strict = tmp_path / "strict" / "m"
    tf_serving_version(strict / "1", W1, B1)
    r = run_cli("--model-base-path", str(strict), "--require-published")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert last.startswith("serving: error: no loadable version") and "--require-published" in last

    base = tmp_path / "m"
    save_mean_colour_model(base / "1", W1, B1, labels=LABELS)  # published
    with ServerProcess(base, "--poll-seconds", "0.2", "--settle-seconds", "0.5", "--require-published") as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        tf_serving_version(tmp_path / "staging" / "2", W2, B2)
        (tmp_path / "staging" / "2").rename(base / "2")
        wait_for(lambda: "2" in status(c), what="version 2 in the status")
        time.sleep(2)  # four settle windows: it would have been served without the flag
        assert served_version(c) == 1
        state, why = status(c)["2"]
        assert state == "START" and why.startswith(f"no {PUBLISHED_FILE}") and "--require-published" in why
        assert version_gauges(c)["waiting"] == 1.0
        log = server.log_text()
    assert "without published.json" not in log
