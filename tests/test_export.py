"""Export: SavedModel round trip against the Keras model, labels and metadata, versions,
the serving package's contract check, and the CLI (saved_model_cli lists the
signatures)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfmicle import export as ex
from tfmicle import model_format as mf
from tfmicle.config import config_hash, load_config
from tfmicle.data.augment import decode_image, preprocess_eval
from tfmicle.rundir import load_classifier

pytestmark = pytest.mark.slow  # every test here needs a fine-tuned run

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def sample_images():
    rng = np.random.default_rng(11)
    arrays = [rng.integers(0, 256, s, dtype=np.uint8) for s in
              ((40, 36, 3), (50, 50, 3), (33, 47, 3), (64, 64, 3))]
    encoded = [tf.io.encode_png(a).numpy() for a in arrays[:3]]
    encoded.append(tf.io.encode_jpeg(arrays[3]).numpy())
    return encoded


def test_export_round_trip_matches_keras(exported_model):
    out = exported_model
    run = out["run"]
    path = out["path"]
    assert out["version"] == 1 and path.endswith(os.path.join("tiny", "1"))
    images = sample_images()
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serving_default"](images=tf.constant(images))
    model, _, _, prefix = load_classifier(run["model_dir"], "best")
    pixels = tf.stack([preprocess_eval(tf.constant(b), 32) for b in images])
    feats, logits = model.features_and_logits(pixels, training=False)
    want = tf.nn.softmax(logits).numpy()
    assert got["probabilities"].shape == (4, 3) and got["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(got["probabilities"].numpy(), want, atol=1e-4)
    np.testing.assert_allclose(got["probabilities"].numpy().sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got["embedding"].numpy(), feats.numpy(), atol=1e-4)
    # serving_pixels on the decoded image = serving_default on the encoded one.
    px = loaded.signatures["serving_pixels"](pixels=decode_image(tf.constant(images[1]))[None])
    np.testing.assert_allclose(px["probabilities"].numpy(), got["probabilities"].numpy()[1:2],
                               atol=1e-5)
    # The scoring entry point (no preprocessing) agrees too.
    pre = loaded.predict_preprocessed(pixels)
    np.testing.assert_allclose(pre["probabilities"].numpy(), want, atol=1e-4)


def test_labels_and_metadata(exported_model):
    out = exported_model
    run = out["run"]
    info = json.load(open(os.path.join(run["data"], "dataset.json")))
    labels = Path(out["path"], "assets", "labels.txt").read_text().splitlines()
    assert labels == info["class_names"]
    meta = json.load(open(os.path.join(out["path"], "assets", "metadata.json")))
    best = json.load(open(os.path.join(run["model_dir"], "best", "state.json")))
    cfg = load_config(os.path.join(run["model_dir"], "config.yaml"))
    assert meta["task"] == "multiclass" and meta["image_size"] == 32
    assert meta["class_names"] == info["class_names"]
    assert meta["config_hash"] == config_hash(cfg)
    assert meta["validation"] == best["metrics"] and meta["step"] == best["step"]
    assert meta["checkpoint_kind"] == "best" and meta["embedding_dim"] == 128


def test_output_versions():
    from tfmicle import cli
    assert ex.resolve_out("/m/derm/7") == ("/m/derm", 7)
    with pytest.raises(cli.UsageError, match="positive"):
        ex.resolve_out("/m/derm/0")


def test_serving_package_loads_the_export(exported_model):
    """The serving package's own contract check and smoke test accept the export."""
    from serving.model import load_version
    out = exported_model
    served = load_version(Path(out["path"]), "tiny", 1)
    assert served.labels == ["a", "b", "c"] and served.input.name == "images"
    images = sample_images()
    direct = tf.saved_model.load(out["path"]).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(served.predict(images), direct, atol=1e-6)


def test_cli_export_next_version_and_saved_model_cli(root, capsys, finetuned_run):
    run = finetuned_run
    base = root / "models_cli" / "derm"
    (base / "3").mkdir(parents=True)  # a taken number, even without a model in it
    rc = ex.main(["--model-dir", run["model_dir"], "--out", str(base), "--checkpoint", "latest",
                  "--no-verify"])
    assert rc == 0 and capsys.readouterr().out.strip().splitlines()[-1] == str(base / "4")
    assert mf.next_version(str(base)) == 5
    assert not [n for n in os.listdir(base) if n.startswith(".tmp")]
    meta = json.load(open(base / "4" / "assets" / "metadata.json"))
    lines = [json.loads(x) for x in open(os.path.join(run["model_dir"], "validation.jsonl"))]
    assert meta["checkpoint_kind"] == "latest" and meta["step"] == lines[-1]["step"] == 4
    assert meta["validation"] == {k: v for k, v in lines[-1].items() if k != "step"}
    rc = ex.main(["--model-dir", run["model_dir"], "--out", str(base / "4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "already exists" in err[0]
    show = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                           "show", "--all", "--dir", str(base / "4")], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert show.returncode == 0, show.stderr
    text = show.stdout
    assert "signature_def['serving_default']" in text
    assert "signature_def['serving_pixels']" in text
    assert "inputs['images']" in text and "DT_STRING" in text
    assert "outputs['probabilities']" in text and "outputs['embedding']" in text


def test_cli_usage_errors_are_one_line(root, capsys, pretrained_run):
    pre = pretrained_run
    rc = ex.main(["--model-dir", pre, "--out", str(root / "models_err" / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a fine-tuning run" in err[0]
    rc = ex.main(["--model-dir", str(root / "missing"), "--out", str(root / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not found" in err[0]
    with pytest.raises(SystemExit) as e:
        ex.main(["--model-dir"])
    assert e.value.code == 2
