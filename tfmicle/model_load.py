"""The one loader of an exported model: a version folder -> a ``LoadedModel`` whose
SavedModel follows the contract of ``tfmicle.model_format``, checked once, the same
way for ``serving`` (which turns a refusal into ``ModelLoadError``: that version is
refused, the server keeps serving) and ``tfmicle.score`` (``ScoreError``: one line,
exit 2).

The contract, checked at load time:
- ``serving_default`` takes ONE 1-D ``tf.string`` tensor of encoded images (any name)
  and returns a dict holding ``probabilities`` float [batch, K] (other outputs, e.g.
  ``embedding``, ride along) or, failing that, exactly one float [batch, K] output
  under any name;
- the smoke test: ``probe_images()`` go through it and come back [2, K], K >= 1, finite;
- class names: ``assets/labels.txt`` when present, else metadata.json's
  ``class_names``, else "0".."K-1"; whichever names there are must be K;
- ``assets/metadata.json``, when present, is a JSON object (task, image size...).
Optional: ``serving_explain`` (Grad-CAM; a model without it, or with one of other
inputs / outputs, loads without explanations) and ``predict_preprocessed`` (used when
metadata.json gives the image size).

TensorFlow is imported inside the functions, so importing this module stays as light
as ``tfmicle.model_format``. Map: docs/architecture.md.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from tfmicle import model_format as mf
from tfmicle.tasks import MULTICLASS

log = logging.getLogger(__name__)

EXPLAIN_OUTPUTS = (mf.PROBABILITIES_OUTPUT, mf.HEATMAP_OUTPUT, mf.EXPLAINED_CLASS_OUTPUT,
                   mf.PIXELS_OUTPUT)


class ContractError(Exception):
    """A version folder that is not a SavedModel of the contract (one line, the reason).
    Each tool turns it into its own error: serving's ModelLoadError, score's ScoreError."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # TF name, e.g. "string", "float32"
    shape: tuple[int | None, ...] | None  # None = unknown rank


def _tensor_info(name: str, spec: Any) -> TensorInfo:
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(name=name, dtype=spec.dtype.name, shape=shape)


def images_input(fn: Any) -> tuple[str, Any]:
    """(name, spec) of serving_default's one input: a 1-D tf.string tensor."""
    args, kwargs = fn.structured_input_signature
    specs = dict(kwargs)
    if args or len(specs) != 1:
        raise ContractError(f"'{mf.SIGNATURE}' must take exactly one input, it takes "
                            f"{len(args) + len(specs)}")
    (name, spec), = specs.items()
    rank = spec.shape.rank
    if spec.dtype.name != "string" or (rank is not None and rank != 1):
        shape = None if rank is None else tuple(spec.shape.as_list())
        raise ContractError(f"'{mf.SIGNATURE}' input '{name}' must be a 1-D tf.string tensor of "
                            f"encoded images, it is {spec.dtype.name} {shape}")
    return name, spec


def probabilities_output(outputs: Any) -> str:
    """The name of serving_default's probabilities among its outputs (specs or tensors):
    ``probabilities``, else the one float [batch, K] output there is."""
    if not isinstance(outputs, Mapping):
        raise ContractError(f"'{mf.SIGNATURE}' must return a dict of named outputs")

    def candidate(spec: Any) -> bool:
        return spec.dtype.is_floating and spec.shape.rank in (None, 2)

    name = mf.PROBABILITIES_OUTPUT if mf.PROBABILITIES_OUTPUT in outputs else \
        next(iter(outputs)) if len(outputs) == 1 else None
    if name is None or not candidate(outputs[name]):
        raise ContractError(f"'{mf.SIGNATURE}' must return '{mf.PROBABILITIES_OUTPUT}' [batch, K] "
                            f"float, or a single [batch, K] float output; it returns {sorted(outputs)}")
    return name


def call_images(fn: Any, images: Any) -> dict:
    """Encoded images (bytes, or a 1-D tf.string tensor) through a serving signature ->
    its raw outputs {name: tensor}."""
    import tensorflow as tf
    name, _ = images_input(fn)
    x = images if tf.is_tensor(images) else tf.constant(list(images), dtype=tf.string)
    return fn(**{name: x})


def encoded_outputs(fn: Any, images: Any) -> dict[str, np.ndarray]:
    """Encoded images through serving_default -> {"probabilities": [B, K], and
    "embedding": [B, D] when the model has one} (numpy, the model's dtypes)."""
    out = call_images(fn, images)
    res = {mf.PROBABILITIES_OUTPUT: out[probabilities_output(fn.structured_outputs)].numpy()}
    if mf.EMBEDDING_OUTPUT in out:
        res[mf.EMBEDDING_OUTPUT] = out[mf.EMBEDDING_OUTPUT].numpy()
    return res


def _explain_fn(signatures: Any) -> Any:
    """serving_explain when it has tfmicle's inputs and outputs, else None (loaded
    without explanations)."""
    fn = signatures.get(mf.EXPLAIN_SIGNATURE) if hasattr(signatures, "get") else None
    if fn is None:
        return None
    inputs = dict(fn.structured_input_signature[1])
    outputs = fn.structured_outputs if isinstance(fn.structured_outputs, dict) else {}
    if set(inputs) != {mf.IMAGES_INPUT, mf.CLASSES_INPUT} or not set(EXPLAIN_OUTPUTS) <= set(outputs):
        log.warning("'%s' has inputs %s and outputs %s; loaded without explanations",
                    mf.EXPLAIN_SIGNATURE, sorted(inputs), sorted(outputs))
        return None
    return fn


@dataclass
class LoadedModel:
    """One exported model version, checked against the contract (``load``)."""
    path: str
    input: TensorInfo
    output: TensorInfo  # shape (None, K) once the smoke test has run
    labels: list[str]
    metadata: dict
    signature: Any = field(repr=False)  # serving_default
    explain_fn: Any = field(default=None, repr=False)  # serving_explain, when exported with it
    _keepalive: Any = field(default=None, repr=False)  # the loaded object owns the variables

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def task(self) -> str:
        return self.metadata.get("task", MULTICLASS)

    @property
    def image_size(self) -> int | None:
        return self.metadata.get("image_size")

    @property
    def preprocessed_fn(self) -> Any:
        """predict_preprocessed (pixels [B, S, S, 3]) when the model has it and
        metadata.json gives S, else None."""
        if self.image_size and hasattr(self._keepalive, mf.PREPROCESSED_FUNCTION):
            return getattr(self._keepalive, mf.PREPROCESSED_FUNCTION)
        return None

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> float32 [len(images), K]. Runs the model (blocking)."""
        out = call_images(self.signature, images)
        probs = np.asarray(out[self.output.name].numpy(), dtype=np.float32)
        if probs.ndim != 2 or probs.shape[0] != len(images):
            raise RuntimeError(f"model returned shape {probs.shape} for {len(images)} images; "
                               "expected [batch, K]")
        return probs

    def explain(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Encoded images -> {"probabilities" [n, K], "heatmap" [n, S, S] in [0, 1],
        "explained_class" [n], "pixels" [n, S, S, 3]} for the top class (a backward pass;
        blocking). RuntimeError when the model has no serving_explain."""
        import tensorflow as tf
        if self.explain_fn is None:
            raise RuntimeError(f"{self.path} has no '{mf.EXPLAIN_SIGNATURE}' signature")
        out = self.explain_fn(**{mf.IMAGES_INPUT: tf.constant(list(images), dtype=tf.string),
                                 mf.CLASSES_INPUT: tf.fill([len(images)], -1)})
        return {k: out[k].numpy() for k in EXPLAIN_OUTPUTS}


def _metadata(version_dir: str) -> dict:
    try:
        metadata = mf.read_metadata(version_dir)
    except ValueError as e:  # json's error: the line and column
        raise ContractError(f"{version_dir}/{mf.METADATA_FILE} is not valid JSON: {e}") from None
    if not isinstance(metadata, dict):
        raise ContractError(f"{version_dir}/{mf.METADATA_FILE} is not a JSON object")
    return metadata


def _class_names(version_dir: str, metadata: dict, k: int) -> list[str]:
    """labels.txt, else metadata.json's class_names, else "0".."K-1"; K names in all."""
    labels = mf.read_labels(version_dir)
    where = mf.LABELS_FILE
    if labels is None and metadata.get("class_names") is not None:
        labels, where = metadata["class_names"], f"{mf.METADATA_FILE}'s class_names"
        if not isinstance(labels, list):
            raise ContractError(f"{version_dir}/{where} is not a list")
        labels = [str(c) for c in labels]
    if labels is None:
        return [str(i) for i in range(k)]
    if len(labels) != k:
        raise ContractError(f"{version_dir}/{where} has {len(labels)} names but the model has "
                            f"{k} classes")
    return labels


def load(version_dir: str | os.PathLike) -> LoadedModel:
    """Loads a version folder, checks the contract, runs the smoke test (which also
    warms the model up: the first call pays for graph set-up). Raises ContractError. The
    folder may be a URL (gs://, ram://): a str, as pathlib would make "gs:/b" of "gs://b".
    Whether the folder is published is the caller's rule (mf.resolve_version, or
    serving's readiness)."""
    import tensorflow as tf

    version_dir = os.fspath(version_dir)
    if not mf.has_saved_model(version_dir):
        raise ContractError(f"{version_dir} has no {mf.SAVED_MODEL_FILE}")
    metadata = _metadata(version_dir)
    try:
        obj = tf.saved_model.load(version_dir)
    except Exception as e:  # TF raises many types for a broken SavedModel
        raise ContractError(f"cannot load SavedModel from {version_dir}: "
                            f"{type(e).__name__}: {e}") from None
    signatures = getattr(obj, "signatures", {})
    if mf.SIGNATURE not in signatures:
        raise ContractError(f"{version_dir} has no '{mf.SIGNATURE}' signature "
                            f"(has: {sorted(signatures)})")
    fn = signatures[mf.SIGNATURE]
    in_name, in_spec = images_input(fn)
    out_name = probabilities_output(fn.structured_outputs)
    model = LoadedModel(path=version_dir, input=_tensor_info(in_name, in_spec),
                        output=_tensor_info(out_name, fn.structured_outputs[out_name]),
                        labels=[], metadata=metadata, signature=fn,
                        explain_fn=_explain_fn(signatures), _keepalive=obj)
    try:
        probs = model.predict(mf.probe_images())
    except Exception as e:  # whatever the graph raises on the probes
        raise ContractError(f"smoke test failed on {version_dir}: {type(e).__name__}: {e}") from None
    if probs.shape[1] < 1 or not np.all(np.isfinite(probs)):
        raise ContractError(f"smoke test on {version_dir} returned shape {probs.shape} or "
                            "non-finite values")
    k = probs.shape[1]
    model.labels = _class_names(version_dir, metadata, k)
    model.output = TensorInfo(out_name, model.output.dtype, (None, k))
    return model


__all__ = ["ContractError", "TensorInfo", "LoadedModel", "load", "images_input",
           "probabilities_output", "call_images", "encoded_outputs"]
