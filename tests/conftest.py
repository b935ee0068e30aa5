"""Test set-up: two logical CPU devices (so MirroredStrategy can run two replicas on a
CPU-only machine; must happen before TensorFlow starts) and small record fixtures."""
from __future__ import annotations

import contextlib
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

from tfmicle.data import records  # noqa: E402


def beam_python() -> str | None:
    """A Python with apache_beam: this one, else TFMICLE_BEAM_PYTHON or the .venv-beam
    that setup.sh makes (apache-beam pins protobuf < 7, so it has its own environment);
    None when there is none (the Beam tests skip)."""
    import sys
    try:
        import apache_beam  # noqa: F401
        return sys.executable
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cand = os.environ.get("TFMICLE_BEAM_PYTHON", os.path.join(root, ".venv-beam", "bin", "python"))
    return cand if os.path.exists(cand) else None


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes."""
    return tf.io.encode_png(tf.constant(array, tf.uint8)).numpy()


def write_records(out_dir: str, split: str, cases: list[dict], class_names: list[str],
                  num_shards: int = 2, task: str = "multiclass") -> str:
    """Writes cases (dicts of encode_case kwargs) as shards of `split` plus a minimal
    dataset.json (merged with an existing one). A test fixture, not data_prep."""
    os.makedirs(out_dir, exist_ok=True)
    for s in range(num_shards):
        path = os.path.join(out_dir, records.shard_name(split, s, num_shards))
        with tf.io.TFRecordWriter(path) as w:
            for c in cases[s::num_shards]:
                w.write(records.encode_case(**c).SerializeToString())
    info_path = os.path.join(out_dir, records.DATASET_JSON)
    info = json.load(open(info_path)) if os.path.exists(info_path) else {
        "schema_version": records.SCHEMA_VERSION, "task": task, "class_names": class_names,
        "splits": {}}
    info["splits"][split] = {"cases": len(cases),
                             "images": sum(len(c["images"]) for c in cases)}
    with open(info_path, "w") as f:
        json.dump(info, f)
    return out_dir


def synthetic_cases(n_cases: int, images_per_case, size: int = 40, num_classes: int = 3,
                    seed: int = 0) -> list[dict]:
    """Cases whose images are coloured noise; class = case index % num_classes (tinted)."""
    rng = np.random.default_rng(seed)
    cases = []
    for c in range(n_cases):
        n = images_per_case(c) if callable(images_per_case) else images_per_case
        label = c % num_classes
        imgs = []
        for _ in range(n):
            a = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
            a[..., label] = 0.5 * a[..., label] + 127
            imgs.append(png_bytes(a.astype(np.uint8)))
        cases.append({"case_id": f"case{c:04d}", "patient_id": f"p{c:04d}", "images": imgs,
                      "image_ids": [f"case{c:04d}/img{i}.png" for i in range(n)],
                      "label_class": label})
    return cases


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory) -> str:
    """A records folder: train (24 cases of 1-3 images, 3 classes) and valid (6 cases)."""
    d = str(tmp_path_factory.mktemp("records"))
    write_records(d, "train", synthetic_cases(24, lambda c: 1 + c % 3), ["a", "b", "c"])
    write_records(d, "valid", synthetic_cases(6, 2, seed=1), ["a", "b", "c"])
    return d


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    """The one folder of the session's shared training runs (tests/_finetune_runs.py:
    records, a pretraining run, fine-tuning runs and their exports, each made once)."""
    p = tmp_path_factory.getbasetemp() / "ft_runs"
    p.mkdir(exist_ok=True)
    return p


@pytest.fixture(scope="session")
def mc_records(root) -> str:
    import _finetune_runs as runs
    return runs.multiclass_records(root)


@pytest.fixture(scope="session")
def ml_records(root) -> str:
    import _finetune_runs as runs
    return runs.multilabel_records(root)


@pytest.fixture(scope="session")
def pretrained_run(root, mc_records) -> str:
    import _finetune_runs as runs
    return runs.pretrained(root, mc_records)


@pytest.fixture(scope="session")
def finetuned_run(root, pretrained_run, mc_records) -> dict:
    import _finetune_runs as runs
    return runs.finetuned(root, pretrained_run, mc_records)


@pytest.fixture(scope="session")
def finetuned_ml_run(root, ml_records) -> dict:
    import _finetune_runs as runs
    return runs.finetuned_multilabel(root, ml_records)


@pytest.fixture(scope="session")
def exported_model(root, finetuned_run) -> dict:
    import _finetune_runs as runs
    return runs.exported(root, finetuned_run)


@pytest.fixture(scope="session")
def exported_ml_model(root, finetuned_ml_run) -> dict:
    import _finetune_runs as runs
    return runs.exported_multilabel(root, finetuned_ml_run)


@pytest.fixture(scope="session")
def simclr_r50_checkpoint(tmp_path_factory) -> str:
    """The official-format r50_1x_sk0 checkpoint of ../shared/fixtures/simclrv2_tf1
    (its values rule; about 270 MB in a temp folder), written once per session."""
    import _simclr_tf1
    d = tmp_path_factory.mktemp("simclrv2_r50_1x_sk0")
    return _simclr_tf1.materialise("r50_1x_sk0", str(d / f"model.ckpt-{_simclr_tf1.STEP}"))


SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                       "shared"))


def shared_path(*parts: str, module: bool = False) -> str:
    """A path under ../shared (the reference data beside the clone). Missing: skipped
    with the reason on a user's clone, a failure under CI (CI=true), never a silent skip.
    module=True: called at a test module's top level (skips or fails the whole file)."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        msg = f"needs ../shared/{'/'.join(parts)} beside the clone (not found: {path})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg, allow_module_level=module)
    return path


def run_main(main, argv, capsys) -> tuple[int, str, str]:
    """A CLI's main(argv) in this process, as `python -m` would run it: (exit status,
    stdout, stderr). The CLI error cases use it; one --help per CLI stays a subprocess."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def import_or_skip(module: str, extra: str):
    """pytest.importorskip, except under CI (CI=true), where setup.sh installs every extra
    and a missing one is a failure, never a silent skip."""
    try:
        return __import__(module)
    except ImportError:
        msg = f"needs {module} (pip install -e '.[{extra}]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def ham_slice(tmp_path_factory) -> str:
    """A small HAM10000 folder in the official layout, cut from ../shared/data/ham10000:
    every lesion with a listed near-identical pair and another photo (up to 8), 16 other
    multi-photo lesions and 24 single-photo lesions, metadata rows in the source's order
    (sorted by diagnosis), images copied, near_duplicate_pairs.csv filtered to them."""
    import csv
    import shutil
    src = shared_path("data", "ham10000")
    with open(os.path.join(src, "HAM10000_metadata.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(src, "near_duplicate_pairs.csv"), newline="") as f:
        pairs = list(csv.DictReader(f))
    by_lesion: dict[str, list[dict]] = {}
    for r in rows:
        by_lesion.setdefault(r["lesion_id"], []).append(r)
    near = [p["lesion_id"] for p in pairs if p["all_pairs_of_lesion_near_identical"] == "0"]
    near = list(dict.fromkeys(near))[:8]
    multi = [k for k, v in by_lesion.items() if len(v) >= 2 and k not in near][:16]
    single = [k for k, v in by_lesion.items() if len(v) == 1][:24]
    keep = set(near + multi + single)
    out = tmp_path_factory.mktemp("ham_slice")
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        os.makedirs(out / part)
    kept_rows = [r for r in rows if r["lesion_id"] in keep]
    for r in kept_rows:
        for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
            p = os.path.join(src, part, r["image_id"] + ".jpg")
            if os.path.isfile(p):
                shutil.copy(p, out / part)
    with open(out / "HAM10000_metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept_rows)
    with open(out / "near_duplicate_pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(pairs[0]))
        w.writeheader()
        w.writerows(p for p in pairs if p["lesion_id"] in keep)
    return str(out)



# ----------------------------------------------------------------- the fast test loop
# `pytest -m "not slow"` is the edit-test loop: it must stay quick. So every test that
# starts a process, a server or Beam carries its marker (each implies slow), and an
# unmarked test may neither start a process nor take more than UNMARKED_BUDGET_S, counted
# as the smaller of its wall time and this process's CPU time (other jobs inflate the
# first, TensorFlow's threads the second; a quiet machine shows the real figure in one of
# them), nor over WALL_FACTOR times that of wall time (a test that waits).
# TFMICLE_TEST_BUDGET_S overrides it, 0 turns the check off. Such a test fails with the
# marker to add.
PROCESS_MARKERS = ("subprocess", "server", "beam")
# one-line commands libraries run for themselves (matplotlib's font cache, platform's
# CPU name): not the processes the rule is about
LIBRARY_HELPERS = {"fc-list", "uname", "ldconfig", "nvidia-smi", "lscpu"}
UNMARKED_BUDGET_S = float(os.environ.get("TFMICLE_TEST_BUDGET_S", "3"))
# a test that waits a minute is wrong however busy the machine; a starved one (xdist
# workers beside multi-process tests) waited 32 s for 1.2 s of CPU, so not less
WALL_FACTOR = 20


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(m) for m in PROCESS_MARKERS) and \
                not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def _unmarked(item) -> bool:
    return not any(item.get_closest_marker(m) for m in ("slow",) + PROCESS_MARKERS)


class _SpawnRefused(BaseException):
    """Raised (not an Exception, so no `except Exception` in the code under test hides
    it) when an unmarked test starts a process."""


@contextlib.contextmanager
def _no_processes(item):
    """Within the block, starting a process (subprocess, multiprocessing) raises
    _SpawnRefused, except the LIBRARY_HELPERS commands."""
    import multiprocessing.process
    import subprocess
    saved = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start

    def refuse(*_a, **_k):
        raise _SpawnRefused(f"{item.nodeid} starts a process: mark it "
                            "@pytest.mark.subprocess (or server / beam)")

    def popen(self, args, *a, **k):
        program = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
        if os.path.basename(str(program).split()[0]) not in LIBRARY_HELPERS:
            refuse()
        saved[0](self, args, *a, **k)
    subprocess.Popen.__init__ = popen
    multiprocessing.process.BaseProcess.start = refuse
    try:
        yield
    finally:
        subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start = saved


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    if not _unmarked(item):   # a fixture of an unmarked test must not start one either
        yield
        return
    with _no_processes(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not _unmarked(item):
        yield
        return
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with _no_processes(item):
            yield
    finally:
        item.user_properties += [("call_seconds", time.perf_counter() - t0),
                                 ("call_cpu_seconds", time.process_time() - c0)]


ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# the one kind of skip CI accepts: a test of what happens when something is absent,
# on a machine where it is present (its twin test runs instead)
PRESENT_HERE = "installed here"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if ON_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if PRESENT_HERE not in reason:   # .ci/run installs everything: a skip is a gap
            report.outcome = "failed"
            report.longrepr = f"skipped under CI ({reason}): CI must run every test"
            return
    if call.when != "call" or not report.passed or not _unmarked(item) or \
            UNMARKED_BUDGET_S <= 0:
        return
    props = dict(item.user_properties)
    wall, cpu = props.get("call_seconds", 0.0), props.get("call_cpu_seconds", 0.0)
    if min(cpu, wall) > UNMARKED_BUDGET_S or wall > WALL_FACTOR * UNMARKED_BUDGET_S:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {cpu:.1f} s of CPU and {wall:.1f} s of wall "
                           f"time, over the {UNMARKED_BUDGET_S:g} s (CPU) / "
                           f"{WALL_FACTOR * UNMARKED_BUDGET_S:g} s (wall) an unmarked test "
                           "may take: make it smaller or mark it @pytest.mark.slow")
