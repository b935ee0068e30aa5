"""The one loader of an exported model (tfmicle.model_load): one strictness for
serving and score. Each case is checked through both tools' entry points, against
expectations written here (not read from the loader): the same models load, the same
ones are refused with the same reason, each tool in its own error type."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfmicle.model_format import LABELS_FILE, METADATA_FILE, PUBLISHED_FILE, publish

W = np.eye(3, 4, dtype=np.float32) * 4  # the mean-colour model of serving.toy, K = 4
B = np.zeros(4, np.float32)


@pytest.mark.subprocess
def test_importing_the_loader_imports_no_tensorflow():
    code = ("import sys, tfmicle.model_load, serving.model, tfmicle.score.model; "
            "print('tensorflow' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def both(folder) -> tuple:
    """(score's model, serving's model), or each tool's error when it refuses."""
    from serving.model import ModelLoadError, load_version
    from tfmicle.score.model import ScoreError, load_model

    out = []
    for tool, error in ((lambda: load_model(str(folder)), ScoreError),
                        (lambda: load_version(folder, "m", 1), ModelLoadError)):
        try:
            out.append(tool())
        except error as e:
            out.append(e)
    return tuple(out)


def refused(folder) -> str:
    """The reason both tools give for refusing folder (the same one), checked to be
    score's user error (exit 2) and serving's version refusal."""
    from serving.model import ModelLoadError
    from tfmicle.cli import UsageError
    from tfmicle.score.model import ScoreError

    scored, served = both(folder)
    assert isinstance(scored, ScoreError) and isinstance(scored, UsageError), scored
    assert isinstance(served, ModelLoadError) and not isinstance(served, UsageError), served
    assert str(scored) == str(served)
    return str(scored)


def republish(folder, labels: str | None = None, metadata: object = None) -> None:
    """Rewrites the assets (None: removes the file; a str metadata is written as it is)
    and the publish marker, as a tool that edits an export would."""
    for rel, content in ((LABELS_FILE, labels), (METADATA_FILE, metadata)):
        path = folder / rel
        if content is None:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    (folder / PUBLISHED_FILE).unlink()
    publish(folder)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """One published mean-colour model (labels a..d, an embedding); tests copy it."""
    from serving.toy import save_mean_colour_model
    return save_mean_colour_model(tmp_path_factory.mktemp("toy") / "1", W, B, labels=list("abcd"))


def copy(toy, tmp_path, name: str):
    return shutil.copytree(toy, tmp_path / name / "1")


@pytest.mark.slow
def test_class_names_come_from_labels_then_metadata_then_the_output_width(toy, tmp_path):
    cases = [  # (labels.txt, metadata.json, the class names both tools give)
        ("a\nb\nc\nd\n", {"class_names": list("wxyz"), "task": "multilabel"}, list("abcd")),
        (None, {"class_names": list("wxyz")}, list("wxyz")),
        (None, {"task": "multiclass"}, ["0", "1", "2", "3"]),
        (None, None, ["0", "1", "2", "3"]),
    ]
    for i, (labels, metadata, names) in enumerate(cases):
        folder = copy(toy, tmp_path, f"c{i}")
        republish(folder, labels, metadata)
        scored, served = both(folder)
        assert scored.class_names == names and served.labels == names, (i, scored, served)
        assert scored.num_classes == served.num_classes == 4
        assert scored.task == (metadata or {}).get("task", "multiclass")
        assert served.output.name == "probabilities" and served.output.shape == (None, 4)


@pytest.mark.slow
def test_class_names_of_another_count_than_the_output_are_refused(toy, tmp_path):
    folder = copy(toy, tmp_path, "labels")
    republish(folder, "a\nb\nc\n", {"class_names": list("wxyz")})  # labels.txt decides: 3 != 4
    assert refused(folder) == f"{folder}/{LABELS_FILE} has 3 names but the model has 4 classes"
    folder = copy(toy, tmp_path, "meta")
    republish(folder, None, {"class_names": list("wxyzv")})
    assert refused(folder) == (f"{folder}/{METADATA_FILE}'s class_names has 5 names but the "
                               f"model has 4 classes")
    folder = copy(toy, tmp_path, "empty")
    republish(folder, "\n\n", None)  # a labels.txt with no names is not "no labels.txt"
    assert "has 0 names but the model has 4 classes" in refused(folder)


@pytest.mark.slow
def test_a_broken_metadata_file_is_refused(toy, tmp_path):
    folder = copy(toy, tmp_path, "json")
    republish(folder, "a\nb\nc\nd\n", '{"task": "multi')
    assert refused(folder).startswith(f"{folder}/{METADATA_FILE} is not valid JSON: ")
    folder = copy(toy, tmp_path, "list")
    republish(folder, "a\nb\nc\nd\n", ["a"])
    assert refused(folder) == f"{folder}/{METADATA_FILE} is not a JSON object"


def save_module(folder, signatures: dict, labels=None) -> None:
    import tensorflow as tf
    module = tf.Module()
    for name, fn in signatures.items():
        setattr(module, name.replace("-", "_"), fn)
    tf.saved_model.save(module, str(folder), signatures=signatures)
    if labels is not None:
        (folder / LABELS_FILE).parent.mkdir(exist_ok=True)
        (folder / LABELS_FILE).write_text("".join(f"{c}\n" for c in labels))
    publish(folder)


@pytest.mark.slow
def test_the_serving_signature_and_its_outputs_are_required(tmp_path):
    import tensorflow as tf

    def probs(images):
        n = tf.shape(images)[0]
        return tf.fill([n, 2], 0.5)

    encoded = [tf.TensorSpec([None], tf.string, name="images")]
    named = tf.function(lambda images: {"probabilities": probs(images)}, input_signature=encoded)
    folder = tmp_path / "nodefault" / "1"
    save_module(folder, {"classify": named})
    assert refused(folder) == f"{folder} has no 'serving_default' signature (has: ['classify'])"

    # two outputs, neither "probabilities": which one is the answer is not the loader's guess
    two = tf.function(lambda images: {"a": probs(images), "b": probs(images)}, input_signature=encoded)
    folder = tmp_path / "two" / "1"
    save_module(folder, {"serving_default": two})
    assert refused(folder) == ("'serving_default' must return 'probabilities' [batch, K] float, or a "
                               "single [batch, K] float output; it returns ['a', 'b']")

    pixels = tf.function(lambda x: {"probabilities": tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]))},
                         input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
    folder = tmp_path / "pixels" / "1"
    save_module(folder, {"serving_default": pixels})
    assert refused(folder) == ("'serving_default' input 'x' must be a 1-D tf.string tensor of "
                               "encoded images, it is float32 (None, 8, 8, 3)")

    nan = tf.function(lambda images: {"probabilities": probs(images) * np.nan}, input_signature=encoded)
    folder = tmp_path / "nan" / "1"
    save_module(folder, {"serving_default": nan})
    assert "returned shape (2, 2) or non-finite values" in refused(folder)

    # one output under another name, and a labels.txt: both tools load it alike
    single = tf.function(lambda images: {"scores": probs(images)}, input_signature=encoded)
    folder = tmp_path / "single" / "1"
    save_module(folder, {"serving_default": single}, labels=["no", "yes"])
    scored, served = both(folder)
    assert scored.class_names == served.labels == ["no", "yes"] and served.output.name == "scores"
    from tfmicle.score.model import call_encoded_outputs
    out = call_encoded_outputs(scored.encoded_fn, tf.constant([b"x", b"y", b"z"]))
    assert list(out) == ["probabilities"] and out["probabilities"].shape == (3, 2)
    assert scored.explain_fn is None and not served.can_explain and scored.preprocessed_fn is None


@pytest.mark.slow
def test_a_folder_that_is_no_saved_model_is_refused_alike(tmp_path):
    folder = tmp_path / "garbage" / "1"
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x00garbage" * 10)
    publish(folder)
    assert refused(folder).startswith(f"cannot load SavedModel from {folder}: ")
