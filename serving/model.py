"""One loaded model version: the SavedModel contract, checked at load time.

Contract: ``serving_default`` takes ONE 1-D ``tf.string`` tensor of encoded
images and returns a dict holding ``probabilities`` float [batch, K] (other
outputs, e.g. ``embedding``, are ignored) or, failing that, exactly one float
[batch, K] output under any name. Class names come from
``<version>/assets/labels.txt`` when present, else "0".."K-1". File names, the
labels reader and the probe images are tfmicle.model_format's (no TensorFlow, no
training code). Optional: ``serving_explain`` (Grad-CAM, see tfmicle.export); a
model without it is served as before and answers explain requests with a 400.
Map: docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tfmicle.model_format import (CLASSES_INPUT, EXPLAIN_SIGNATURE, EXPLAINED_CLASS_OUTPUT,
                                  HEATMAP_OUTPUT, IMAGES_INPUT, LABELS_FILE, PIXELS_OUTPUT,
                                  PROBABILITIES_OUTPUT, SIGNATURE, has_saved_model, probe_images,
                                  read_labels)

log = logging.getLogger(__name__)

PREFERRED_OUTPUT = PROBABILITIES_OUTPUT


class ModelLoadError(Exception):
    """The version folder is not a SavedModel that follows the contract."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # TF name, e.g. "string", "float32"
    shape: tuple[int | None, ...] | None  # None = unknown rank


@dataclass
class ServedModel:
    name: str
    version: int
    path: str
    input: TensorInfo
    output: TensorInfo
    labels: list[str]
    loaded_at: float
    _fn: Any = field(repr=False)
    _keepalive: Any = field(repr=False)  # the loaded object owns the variables
    _explain: Any = field(default=None, repr=False)  # serving_explain, when exported with it

    @property
    def can_explain(self) -> bool:
        return self._explain is not None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> float32 [len(images), K]. Runs the model (blocking)."""
        import tensorflow as tf

        out = self._fn(**{self.input.name: tf.constant(list(images), dtype=tf.string)})
        probs = np.asarray(out[self.output.name].numpy(), dtype=np.float32)
        if probs.ndim != 2 or probs.shape[0] != len(images):
            raise RuntimeError(
                f"model returned shape {probs.shape} for {len(images)} images; expected [batch, K]"
            )
        return probs

    def explain(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Encoded images -> {"probabilities" [n, K], "heatmap" [n, S, S] in [0, 1],
        "explained_class" [n], "pixels" [n, S, S, 3]} for the top class (a backward pass;
        blocking). RuntimeError when the model has no serving_explain."""
        import tensorflow as tf

        if self._explain is None:
            raise RuntimeError(f"version {self.version} has no '{EXPLAIN_SIGNATURE}' signature")
        out = self._explain(**{IMAGES_INPUT: tf.constant(list(images), dtype=tf.string),
                               CLASSES_INPUT: tf.fill([len(images)], -1)})
        return {k: out[k].numpy() for k in (PROBABILITIES_OUTPUT, HEATMAP_OUTPUT,
                                             EXPLAINED_CLASS_OUTPUT, PIXELS_OUTPUT)}


def _explain_fn(signatures: Any) -> Any:
    """serving_explain when it has tfmicle's inputs and outputs, else None (served
    without explanations)."""
    fn = signatures.get(EXPLAIN_SIGNATURE) if hasattr(signatures, "get") else None
    if fn is None:
        return None
    inputs = dict(fn.structured_input_signature[1])
    outputs = fn.structured_outputs if isinstance(fn.structured_outputs, dict) else {}
    want_out = {PROBABILITIES_OUTPUT, HEATMAP_OUTPUT, EXPLAINED_CLASS_OUTPUT, PIXELS_OUTPUT}
    if set(inputs) != {IMAGES_INPUT, CLASSES_INPUT} or not want_out <= set(outputs):
        log.warning("'%s' has inputs %s and outputs %s; served without explanations",
                    EXPLAIN_SIGNATURE, sorted(inputs), sorted(outputs))
        return None
    return fn


def _tensor_info(name: str, spec: Any) -> TensorInfo:
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(name=name, dtype=spec.dtype.name, shape=shape)


def load_version(version_dir: str | os.PathLike, name: str, version: int) -> ServedModel:
    """Load, check the contract, run the smoke test. Raises ModelLoadError. The folder
    may be a URL (gs://, ram://): a str, as pathlib would make "gs:/b" of "gs://b"."""
    import tensorflow as tf

    version_dir = os.fspath(version_dir)
    if not has_saved_model(version_dir):
        raise ModelLoadError(f"{version_dir} has no saved_model.pb")
    started = time.perf_counter()
    try:
        obj = tf.saved_model.load(version_dir)
    except Exception as e:  # TF raises many types for a broken SavedModel
        raise ModelLoadError(f"cannot load SavedModel from {version_dir}: {type(e).__name__}: {e}") from None
    signatures = getattr(obj, "signatures", {})
    if SIGNATURE not in signatures:
        raise ModelLoadError(f"{version_dir} has no '{SIGNATURE}' signature (has: {sorted(signatures)})")
    fn = signatures[SIGNATURE]
    args, kwargs = fn.structured_input_signature
    specs = dict(kwargs)
    if args or len(specs) != 1:
        raise ModelLoadError(f"'{SIGNATURE}' must take exactly one input, it takes {len(args) + len(specs)}")
    (in_name, in_spec), = specs.items()
    input_info = _tensor_info(in_name, in_spec)
    if in_spec.dtype != tf.string or (input_info.shape is not None and len(input_info.shape) != 1):
        raise ModelLoadError(
            f"'{SIGNATURE}' input '{in_name}' must be a 1-D tf.string tensor of encoded images, "
            f"it is {in_spec.dtype.name} {input_info.shape}"
        )
    outputs = fn.structured_outputs
    if not isinstance(outputs, dict):
        raise ModelLoadError(f"'{SIGNATURE}' must return a dict of named outputs")

    def candidate(spec: Any) -> bool:
        return spec.dtype.is_floating and spec.shape.rank in (None, 2)

    if PREFERRED_OUTPUT in outputs and candidate(outputs[PREFERRED_OUTPUT]):
        out_name = PREFERRED_OUTPUT
    else:
        floats = [k for k, v in outputs.items() if candidate(v)]
        if len(outputs) != 1 or len(floats) != 1:
            raise ModelLoadError(
                f"'{SIGNATURE}' must return '{PREFERRED_OUTPUT}' [batch, K] float, or a single [batch, K] "
                f"float output; it returns {sorted(outputs)}"
            )
        out_name = floats[0]
    output_info = _tensor_info(out_name, outputs[out_name])
    labels = read_labels(version_dir)

    model = ServedModel(
        name=name, version=version, path=version_dir, input=input_info, output=output_info,
        labels=labels or [], loaded_at=time.time(), _fn=fn, _keepalive=obj,
        _explain=_explain_fn(signatures),
    )
    # Smoke test (and warm-up: the first call pays for graph set-up).
    probes = probe_images()
    try:
        probs = model.predict(probes)
    except Exception as e:
        raise ModelLoadError(f"smoke test failed on {version_dir}: {type(e).__name__}: {e}") from None
    if probs.shape[1] < 1 or not np.all(np.isfinite(probs)):
        raise ModelLoadError(f"smoke test on {version_dir} returned shape {probs.shape} or non-finite values")
    k = probs.shape[1]
    if labels is None:
        model.labels = [str(i) for i in range(k)]
    elif len(labels) != k:
        raise ModelLoadError(f"{version_dir}/{LABELS_FILE} has {len(labels)} names but the model has {k} classes")
    model.output = TensorInfo(out_name, output_info.dtype, (None, k))
    log.info(
        "loaded %s version %d from %s: input '%s', output '%s' [batch, %d], %.1fs",
        name, version, version_dir, in_name, out_name, k, time.perf_counter() - started,
    )
    return model
