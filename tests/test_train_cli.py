"""The training CLI as a user runs it: config errors, resume after kill -9."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_main, synthetic_cases, write_records
from tfmicle.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def run_train(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tfmicle.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_config_overrides_and_types(tmp_path):
    cfg = load_config(TINY, ["train.batch_size=32", "model.global_bn=false", "method=simclr",
                             "train.learning_rate=1e-3"])
    assert (cfg.train.batch_size, cfg.model.global_bn, cfg.method) == (32, False, "simclr")
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.model.depth == 18 and cfg.data.image_size == 32  # from the file
    for bad, msg in [(["train.batchsize=3"], "unknown config key 'train.batchsize'"),
                     (["train.batch_size=abc"], "expected an integer"),
                     (["method=byol"], "not one of"),
                     (["model.global_bn=maybe"], "true/false")]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_config(TINY, bad)


@pytest.mark.parametrize("args,expect", [
    (["--config", "nope.yaml", "--model-dir", "x"], "config file not found: nope.yaml"),
    (["--config", TINY, "--model-dir", "x", "--set", "train.bogus=1"],
     "unknown config key 'train.bogus'"),
    (["--config", TINY, "--model-dir", "x", "--strategy", "quantum"], "not one of"),
    (["--config", TINY, "--model-dir", "x", "--set", "data.dir=/no/such/records"],
     "dataset.json not found"),
    (["--config", TINY, "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
])
def test_cli_user_errors_exit_2_with_one_line(args, expect, tmp_path, capsys):
    from tfmicle.train.cli import main
    code, _, err = run_main(main, [str(tmp_path / "m") if a == "x" else a for a in args],
                            capsys)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err


@pytest.mark.subprocess
def test_python_m_train_error_is_one_line_with_no_tensorflow_noise(tmp_path):
    """As a user sees it: TensorFlow's start-up lines are filtered from the one line."""
    r = run_train("--config", TINY, "--model-dir", str(tmp_path / "m"), "--set",
                  "data.dir=/no/such/records")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()  # exactly one: no TensorFlow start-up lines either
    assert len(lines) == 1 and "dataset.json not found" in lines[0], r.stderr
    r = run_train("--help")
    assert r.returncode == 0 and "usage: python -m tfmicle.train" in r.stdout, r.stderr


def test_filtered_stderr_drops_only_the_noise(capfd):
    """What quiet_tensorflow does to `import tensorflow`: C++ writes to file descriptor 2
    are held, the noise lines dropped, the rest written back."""
    from tfmicle import cli
    with cli.filtered_stderr(cli.TF_IMPORT_NOISE):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called\n"
                    b"I0000 00:00:1.2 1 port.cc:153] oneDNN custom operations are on. You\n"
                    b"E0000 something that matters\n")
    assert capfd.readouterr().err == "E0000 something that matters\n"


def test_tpu_strategy_without_tpu_exits_2(tmp_path, capsys):
    # Real records, so the run gets past the data checks and reaches the strategy.
    from tfmicle.train.cli import main
    data = write_records(str(tmp_path / "rec"), "train", synthetic_cases(4, 1, size=32),
                         ["a", "b", "c"])
    code, _, err = run_main(main, ["--config", TINY, "--model-dir", tmp_path / "m",
                                   "--strategy", "tpu", "--tpu", "no-such-tpu",
                                   "--set", "data.dir=" + data], capsys)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [l for l in err.splitlines() if "error:" in l]
    assert len(errors) == 1 and "no TPU found for --tpu=no-such-tpu" in errors[0], err


@pytest.mark.slow
def test_resume_after_kill_9_continues_the_step_counter(tmp_path):
    data = write_records(str(tmp_path / "rec"), "train",
                         synthetic_cases(20, lambda c: 1 + c % 2, size=32), ["a", "b", "c"])
    model_dir = tmp_path / "run"
    args = [sys.executable, "-m", "tfmicle.train", "--config", TINY, "--model-dir",
            str(model_dir), "-q", "--set", f"data.dir={data}", "--set", "train.train_steps=24",
            "--set", "train.checkpoint_steps=4", "--set", "train.log_steps=4"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckdir = model_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        done = sorted(int(m.group(1)) for f in (os.listdir(ckdir) if ckdir.exists() else [])
                      if (m := re.match(r"ckpt-(\d+)\.index$", f)))
        if done and done[-1] >= 8:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (model_dir / "config.yaml").exists()
    import tensorflow as tf
    last = int(tf.train.latest_checkpoint(str(ckdir)).rsplit("-", 1)[1])
    assert 8 <= last < 24
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"done: steps (\d+) -> (\d+) of (\d+)", r.stdout)
    assert m, r.stdout
    assert (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (last, 24, 24)
    assert tf.train.latest_checkpoint(str(ckdir)).endswith("ckpt-24")
    # A third run has nothing left to do.
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "done: steps 24 -> 24 of 24" in r.stdout


@pytest.mark.slow
def test_cli_pretrains_on_two_cpu_replicas(tmp_path):
    data = write_records(str(tmp_path / "rec"), "train",
                         synthetic_cases(12, 2, size=32), ["a", "b", "c"])
    r = run_train("--config", TINY, "--model-dir", str(tmp_path / "run"), "-q",
                  "--strategy", "mirrored", "--num-cpu-devices", "2",
                  "--set", f"data.dir={data}", "--set", "train.train_steps=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "on 2 replica(s)" in r.stderr and "done: steps 0 -> 2 of 2" in r.stdout


@pytest.mark.subprocess
def test_progress_in_a_pipe_is_plain_lines(tmp_path):
    """stdout to a pipe (a log file, CI): no Keras progress bar (\r, ANSI colours) but one
    short line per log_steps with the step, loss, rate and ETA."""
    data = write_records(str(tmp_path / "rec"), "train", synthetic_cases(8, 2, size=32),
                         ["a", "b", "c"])
    r = run_train("--config", TINY, "--model-dir", str(tmp_path / "m"), "--set",
                  "data.dir=" + data, "--set", "train.batch_size=4", "--set",
                  "model.global_bn=false")
    assert r.returncode == 0, r.stderr
    for out in (r.stdout, r.stderr):
        assert "\r" not in out and "\x1b[" not in out
        assert all(len(line) <= 300 for line in out.splitlines())
    steps = [l for l in r.stdout.splitlines() if l.startswith("step ")]
    assert [l.split()[1] for l in steps] == ["3/6", "6/6"], r.stdout
    assert all(" loss " in l and "step/s" in l and "ETA" in l for l in steps), steps
