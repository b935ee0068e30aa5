"""A URL of a scheme TensorFlow has no filesystem for (s3:// without a plugin, a typo such
as gcs://) is one line and exit 2 in every CLI, naming the schemes that work here
(tfmicle.fileio.check_url); ram:// with a Beam runner is refused the same way."""
from __future__ import annotations

import os

import pytest

from tfmicle import fileio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def test_check_url_names_the_schemes_that_work():
    assert {"gs", "ram"} <= set(fileio.url_schemes())  # TensorFlow 2.21's own
    for ok in ("local/dir", "/abs/dir", "file:///abs/dir", "ram://x/y", "gs://b/k", None):
        fileio.check_url(ok, "--out")
    for bad in ("s3://b/k", "gcs://b/k", "foo://x"):
        with pytest.raises(fileio.UnsupportedPath) as e:
            fileio.check_url(bad, "--out")
        assert str(e.value).startswith(f"--out {bad}: no filesystem for ")
        assert "local path" in str(e.value) and "gs://" in str(e.value) and "ram://" in str(e.value)


def _main(tool: str):
    if tool == "data_prep":
        from data_prep.__main__ import main
    elif tool == "train":
        from tfmicle.train import main
    elif tool == "export":
        from tfmicle.export import main
    else:
        from tfmicle.score import main
    return main


@pytest.mark.parametrize("tool,argv,flag,url", [
    ("data_prep", ["--format", "folders", "--input", "{tmp}", "--out", "s3://b/records"],
     "--out", "s3://b/records"),
    ("train", ["--config", TINY, "--model-dir", "gcs://b/run"], "model_dir", "gcs://b/run"),
    ("export", ["--model-dir", "{tmp}", "--out", "foo://x/models"], "--out", "foo://x/models"),
    ("score", ["--model", "{tmp}", "--data", "{tmp}", "--out", "s3://b/reports"], "--out",
     "s3://b/reports"),
])
def test_cli_unsupported_url_is_one_line_exit_2(tool, argv, flag, url, tmp_path, capsys):
    rc = _main(tool)([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"error: {flag} {url}: no filesystem for " in err[0] and "ram://" in err[0], err


def test_score_beam_refuses_ram_out(tmp_path, capsys):
    rc = _main("score")(["--runner", "beam", "--model", str(tmp_path), "--data", str(tmp_path),
                         "--out", "ram://reports"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Beam's workers cannot see" in err[0], err


def test_score_help_says_out_may_be_a_url(capsys):
    with pytest.raises(SystemExit):
        _main("score")(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--out OUT output folder, local or a URL" in out
