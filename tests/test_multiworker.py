"""Multi-worker training (distribute.strategy: multiworker): two worker processes on
127.0.0.1, one CPU replica each, train exactly like one process with two replicas
(MirroredStrategy over 2 logical CPUs): same batches, negatives gathered across workers,
batch-norm statistics synchronised across workers. Only the chief writes the run folder;
a resumed multi-worker run continues from the chief's checkpoint on every worker.
TF_CONFIG mistakes are one-line exit-2 errors."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_main, synthetic_cases, write_records
from tfmicle.distribute import StrategyError, tf_config_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
TIMEOUT = 300


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _train(model_dir, overrides: list[str], env: dict | None = None, *flags: str):
    """Starts `python -m tfmicle.train` (stdout and stderr together)."""
    args = [sys.executable, "-m", "tfmicle.train", "--config", TINY, "--model-dir",
            str(model_dir), "-q", *flags]
    for o in overrides:
        args += ["--set", o]
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list, status: int = 0) -> list[str]:
    """Waits for every process; kills the rest when one fails (a worker whose peer died
    would wait for it). Returns their outputs; fails the test on another exit status."""
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT)
            outs.append(out)
            assert p.returncode == status, out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def _workers(model_dir, overrides, ports, tmp_root, model_dir_1=None) -> list:
    """The two workers of one multi-worker run, each with its own TMPDIR (so the test
    sees what a worker leaves in its temporary folder); model_dir_1: worker 1's
    --model-dir when it differs (a mistake)."""
    procs = []
    for i in range(2):
        tmp = tmp_root / f"tmp-worker{i}"
        tmp.mkdir(parents=True, exist_ok=True)
        procs.append(_train(model_dir if i == 0 or model_dir_1 is None else model_dir_1,
                            overrides,
                            {"TF_CONFIG": _tf_config(ports, i), "TMPDIR": str(tmp)},
                            "--strategy", "multiworker"))
    return procs


def _checkpoint(model_dir, step: int) -> dict[str, np.ndarray]:
    """Every saved tensor (model and optimizer) of checkpoint ckpt-<step>."""
    reader = tf.train.load_checkpoint(os.path.join(str(model_dir), "checkpoints",
                                                   f"ckpt-{step}"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in k}


def _assert_same(a: dict, b: dict, atol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, err_msg=k)


@pytest.mark.subprocess
def test_two_workers_train_like_two_replicas_and_resume(tmp_path):
    data = write_records(str(tmp_path / "rec"), "train",
                         synthetic_cases(20, lambda c: 1 + c % 3, size=32), ["a", "b", "c"])
    # model.global_bn is true by default (tiny.yaml): batch norm synchronised over replicas.
    over = [f"data.dir={data}", "method=simclr", "train.train_steps=4",
            "train.checkpoint_steps=2", "train.keep_checkpoints=5", "train.log_steps=2",
            "train.batch_size=8", "model.online_probe=false", "model.width_multiplier=0.125"]
    mw, ref = tmp_path / "mw", tmp_path / "ref"
    ports = _free_ports(2)
    # The reference: one process, MirroredStrategy over 2 logical CPUs (its own process,
    # like the workers, so it starts TensorFlow with its own device set-up).
    outs = _finish(_workers(mw, over, ports, tmp_path / "run1")
                   + [_train(ref, over, None, "--strategy", "mirrored",
                             "--num-cpu-devices", "2")])
    for out in outs:
        assert "done: steps 0 -> 4 of 4" in out, out[-2000:]
    assert all("on 2 replica(s)" in out for out in outs)

    want = _checkpoint(ref, 4)
    moved = _checkpoint(ref, 2)
    changed = sum(not np.allclose(want[k], moved[k]) for k in want)
    assert changed > len(want) // 2  # steps 3-4 moved most weights, slots and BN stats
    _assert_same(_checkpoint(mw, 4), want)
    _assert_same(_checkpoint(mw, 2), moved)

    # Only the chief wrote: one run folder, and the other worker's temporary folder is gone.
    assert sorted(os.listdir(mw)) == ["checkpoints", "config.yaml", "logs"]
    for i in range(2):
        assert os.listdir(tmp_path / "run1" / f"tmp-worker{i}") == []

    # Resume: the same run killed after its step-2 checkpoint; both workers restore
    # ckpt-2 from the chief's folder, continue the data stream and end where the
    # uninterrupted run ended.
    resumed = tmp_path / "resumed"
    shutil.copytree(mw, resumed)
    for f in (resumed / "checkpoints").glob("ckpt-4*"):
        f.unlink()
    (resumed / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n')
    outs = _finish(_workers(resumed, over, _free_ports(2), tmp_path / "run2"))
    for out in outs:
        assert "done: steps 2 -> 4 of 4" in out, out[-2000:]
    _assert_same(_checkpoint(resumed, 4), want)

    # Workers that see different run folders (no shared storage) would each restore
    # their own: both refuse with one line instead of training on different weights.
    outs = _finish(_workers(resumed, over, _free_ports(2), tmp_path / "run3",
                            model_dir_1=tmp_path / "elsewhere"), status=2)
    for out in outs:
        errors = [line for line in out.splitlines() if "error:" in line]
        assert len(errors) == 1 and "resumed from different steps [4, 0]" in errors[0], out


@pytest.mark.parametrize("tf_config,expect", [
    (None, "strategy multiworker needs TF_CONFIG"),
    ("{cluster: nope", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG task.index 3 is not one of the 1 worker addresses"),
])
def test_bad_tf_config_exits_2_with_one_line(tmp_path, tf_config, expect, monkeypatch,
                                            capsys):
    from tfmicle.train.cli import main
    data = write_records(str(tmp_path / "rec"), "train", synthetic_cases(4, 1, size=32),
                         ["a", "b", "c"])
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    code, _, err = run_main(main, ["--config", TINY, "--model-dir", tmp_path / "m",
                                   "--strategy", "multiworker", "--set", "data.dir=" + data],
                            capsys)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and expect in errors[0], err
    assert not (tmp_path / "m").exists()  # nothing written before the strategy exists


@pytest.mark.parametrize("raw,expect", [
    ("", "needs TF_CONFIG"),
    ("[1, 2]", "no cluster with workers"),
    ('{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}',
     "no cluster with workers"),
    ('{"cluster": {"worker": ["hostonly"]}, "task": {"type": "worker", "index": 0}}',
     "must be a list of \"host:port\" strings"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}}', "has no task"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "evaluator", "index": 0}}',
     "task.type 'evaluator'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}',
     "task.index '0'"),
    ('{"cluster": {"chief": ["h:1", "h:2"], "worker": ["h:3"]}, '
     '"task": {"type": "worker", "index": 0}}', "more than one address"),
])
def test_tf_config_checks(raw, expect):
    with pytest.raises(StrategyError, match=expect.replace("(", r"\(").replace("[", r"\[")):
        tf_config_cluster({"TF_CONFIG": raw})


def test_tf_config_accepts_chief_and_workers():
    conf = {"cluster": {"chief": ["h0:2222"], "worker": ["h1:2222", "h2:2222"]},
            "task": {"type": "worker", "index": 1}}
    cluster, task = tf_config_cluster({"TF_CONFIG": json.dumps(conf)})
    assert cluster == conf["cluster"] and task == ("worker", 1)
