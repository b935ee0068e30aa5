"""A TF Serving repository (version folders without published.json) is served by the
settle rule (serving.readiness), and `python -m tfmicle.model_format publish BASE`
publishes one. Units here; real server processes in tests/test_serving_settle_server.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_main
from serving.readiness import (CHANGING, INCOMPLETE, PUBLISHED, SETTLED, SETTLING, STRICT, UNMATCHED,
                               Readiness)
from tfmicle.model_format import PUBLISHED_FILE, incomplete_reason, publish, unpublished_reason

SAVED_MODEL_FILES = {"saved_model.pb": b"\x08" * 300, "variables/variables.index": b"i" * 40,
                     "variables/variables.data-00000-of-00001": b"d" * 500}


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def test_incomplete_reason_needs_saved_model_and_every_variables_shard(tmp_path):
    v = tmp_path / "1"
    v.mkdir()
    assert incomplete_reason(v) == "no saved_model.pb"
    write_files(v, {"saved_model.pb": b"\x08"})
    assert incomplete_reason(v) == "no variables/"
    write_files(v, {"variables/variables.data-00000-of-00002": b"d"})
    assert incomplete_reason(v) == "no variables/variables.index"
    write_files(v, {"variables/variables.index": b"i"})
    assert incomplete_reason(v) == "variables/variables.data-00001-of-00002 is missing"
    write_files(v, {"variables/variables.data-00001-of-00002": b"d"})
    assert incomplete_reason(v) is None
    w = write_files(tmp_path / "2", {"saved_model.pb": b"\x08", "variables/variables.index": b"i"})
    assert incomplete_reason(w) == "no variables/variables.data-* shard"


class Clocks:
    """A monotonic clock the test moves, and a wall clock ``ahead`` seconds past now."""

    def __init__(self) -> None:
        self.t, self.ahead = 1000.0, 0.0

    def readiness(self, **kw) -> Readiness:
        return Readiness(clock=lambda: self.t, wall_ns=lambda: time.time_ns() + int(self.ahead * 1e9), **kw)


def test_settle_rule_waits_for_files_unchanged_for_the_window(tmp_path):
    clocks = Clocks()
    r = clocks.readiness(settle_s=10)
    v = write_files(tmp_path / "1", SAVED_MODEL_FILES)
    look = r.look(str(v), 1, at_start=True)  # just written: not old at start-up
    assert look.kind == SETTLING and "served once its files have not changed for 10 s" in look.reason
    clocks.t += 6
    assert r.look(str(v), 1).kind == SETTLING
    write_files(v, {"assets/labels.txt": b"a\nb\n"})  # any change restarts the window
    clocks.t += 6
    assert r.look(str(v), 1).kind == SETTLING
    clocks.t += 9.9
    assert r.look(str(v), 1).kind == SETTLING
    clocks.t += 0.2
    assert r.look(str(v), 1).kind == SETTLED
    os.utime(v / "assets/labels.txt", ns=(1, 1))  # an mtime change alone restarts it too
    clocks.t += 11
    assert r.look(str(v), 1).kind == SETTLING
    clocks.t += 11
    assert r.look(str(v), 1).ready

    # a version missing a part is never ready, however long it has been quiet
    w = write_files(tmp_path / "2", {"saved_model.pb": b"\x08"})
    clocks.t += 100
    r.look(str(w), 2)
    clocks.t += 100
    look = r.look(str(w), 2)
    assert look.kind == INCOMPLETE and look.reason == f"no {PUBLISHED_FILE}, and not a whole SavedModel: no variables/"


def test_at_start_up_an_old_folder_is_served_at_once(tmp_path):
    clocks = Clocks()
    v = write_files(tmp_path / "1", SAVED_MODEL_FILES)
    clocks.ahead = 10.5  # as if the files were written 10.5 s before the server started
    assert clocks.readiness(settle_s=10).look(str(v), 1, at_start=True).kind == SETTLED
    r = clocks.readiness(settle_s=10)
    r.look(str(v), 1)  # after start-up only what was watched counts: a store's clock may lag
    assert r.look(str(v), 1).kind == SETTLING


def test_a_copy_that_keeps_old_mtimes_does_not_look_old(tmp_path):
    """cp -p / rsync -a keep the source's mtimes, but cannot keep the ctime: a folder
    copied a moment ago is not taken for an old one at start-up."""
    import shutil

    src = write_files(tmp_path / "src", SAVED_MODEL_FILES)
    hour_ago = time.time_ns() - 3600 * 10**9
    for p in src.rglob("*"):
        os.utime(p, ns=(hour_ago, hour_ago))
    dst = tmp_path / "m" / "1"
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    assert os.stat(dst / "saved_model.pb").st_mtime_ns == hour_ago
    look = Readiness(settle_s=10).look(str(dst), 1, at_start=True)
    assert look.kind == SETTLING and look.quiet_s < 10


def test_the_marker_decides_when_there_is_one(tmp_path):
    clocks = Clocks()
    r = clocks.readiness(settle_s=10)
    v = write_files(tmp_path / "1", SAVED_MODEL_FILES)
    publish(v)
    assert r.look(str(v), 1, at_start=True).kind == PUBLISHED  # no window: the marker is exact
    w = write_files(tmp_path / "2", SAVED_MODEL_FILES)
    publish(w)
    assert r.look(str(w), 2).kind == CHANGING  # new while polling: two looks must agree
    assert r.look(str(w), 2).kind == PUBLISHED
    (w / "saved_model.pb").write_bytes(b"\x08")  # a file that does not match the marker
    clocks.t += 100
    r.look(str(w), 2)
    clocks.t += 100
    look = r.look(str(w), 2)
    assert look.kind == UNMATCHED and look.reason == unpublished_reason(w)

    strict = clocks.readiness(settle_s=10, require_published=True)
    x = write_files(tmp_path / "3", SAVED_MODEL_FILES)
    clocks.ahead = 100
    look = strict.look(str(x), 3, at_start=True)
    assert look.kind == STRICT and look.reason.startswith(f"no {PUBLISHED_FILE}") and "--require-published" in look.reason


def test_start_up_waits_for_a_copy_in_progress_then_gives_up_on_an_incomplete_folder(tmp_path):
    """With nothing loadable yet, start-up waits while a folder without a marker is young
    (a copy may finish), rather than exit; an incomplete folder that stays still is refused."""
    from serving.repository import ModelRepository, NoModelError
    from test_serving_units import FakeModel

    write_files(tmp_path / "1", SAVED_MODEL_FILES)
    repository = ModelRepository(tmp_path, "m", loader=lambda folder, name, version: FakeModel(version),
                                 settle_seconds=0.5)
    t0 = time.monotonic()
    assert repository.load_initial().version == 1 and time.monotonic() - t0 >= 0.4

    other = tmp_path / "other"
    write_files(other / "1", {"saved_model.pb": b"\x08"})
    repository = ModelRepository(other, "m", loader=lambda folder, name, version: FakeModel(version),
                                 settle_seconds=0.5)
    with pytest.raises(NoModelError, match=f"version 1: no {PUBLISHED_FILE}, and not a whole SavedModel: "
                                           "no variables/"):
        repository.load_initial()
    assert [(s.version, s.state) for s in repository.states()] == [(1, "START")]


# -- python -m tfmicle.model_format publish BASE -----------------------------------------------------------
def publish_cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """`python -m tfmicle.model_format publish ARGS`, run in this process."""
    from tfmicle.model_format import main
    code, out, err = run_main(main, ["publish", *args], capsys)
    return subprocess.CompletedProcess(["publish", *args], code, out, err)


def test_publish_base_publishes_every_complete_version_and_refuses_the_rest(tmp_path, capsys):
    base = tmp_path / "m"
    write_files(base / "1", SAVED_MODEL_FILES)  # a TF Serving version: published
    write_files(base / "2", SAVED_MODEL_FILES)
    publish(base / "2")  # already published: left as it is
    marker_2 = (base / "2" / PUBLISHED_FILE).read_bytes()
    write_files(base / "3", {"saved_model.pb": b"\x08"})  # no variables: a copy in progress
    write_files(base / "4", SAVED_MODEL_FILES)
    publish(base / "4")
    (base / "4" / "saved_model.pb").write_bytes(b"\x08")  # marker and files disagree: not rewritten
    marker_4 = (base / "4" / PUBLISHED_FILE).read_bytes()

    r = publish_cli(capsys, str(base))
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines() == [str(base / "1" / PUBLISHED_FILE), f"{base / '2'}: already published"]
    refused = r.stderr.strip().splitlines()
    assert len(refused) == 2 and "Traceback" not in r.stderr
    assert refused[0].startswith(f"python -m tfmicle.model_format: {base / '3'}: not published: no variables/")
    assert refused[1].startswith(f"python -m tfmicle.model_format: {base / '4'}: not published: saved_model.pb has 1 bytes")
    assert unpublished_reason(base / "1") is None
    assert (base / "2" / PUBLISHED_FILE).read_bytes() == marker_2
    assert not (base / "3" / PUBLISHED_FILE).exists()
    assert (base / "4" / PUBLISHED_FILE).read_bytes() == marker_4

    write_files(base / "3", {k: v for k, v in SAVED_MODEL_FILES.items() if k != "saved_model.pb"})
    (base / "4" / PUBLISHED_FILE).unlink()
    r = publish_cli(capsys, str(base))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert all(unpublished_reason(base / str(v)) is None for v in (1, 2, 3, 4))


@pytest.mark.parametrize("make,words", [
    (lambda p: p / "missing", "is not a folder"),
    (lambda p: p, "nothing to publish"),  # neither a version folder nor a base path
])
def test_publish_mistakes_are_one_line_exit_2(tmp_path, make, words, capsys):
    r = publish_cli(capsys, str(make(tmp_path)))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr


def test_no_file_times_means_no_start_up_shortcut(tmp_path):
    """ram:// (and any filesystem that keeps no times) says mtime 0: that is not 'old'."""
    from tfmicle import fileio

    base = "ram://settle-test/m/1"
    for rel, data in SAVED_MODEL_FILES.items():
        fileio.makedirs(fileio.dirname(fileio.join(base, rel)))
        fileio.write_bytes(fileio.join(base, rel), data)
    assert all(fileio.stat_ns(fileio.join(base, rel))[2] == 0 for rel in SAVED_MODEL_FILES)
    clocks = Clocks()
    r = clocks.readiness(settle_s=10)
    assert r.look(base, 1, at_start=True).kind == SETTLING
    clocks.t += 10
    assert r.look(base, 1, at_start=True).kind == SETTLED  # watched for the window
