"""Scoring: the exported model as the scorer sees it (tfmicle.model_format's layout,
or any SavedModel that follows the serving contract). Map: docs/architecture.md."""
from __future__ import annotations

from dataclasses import dataclass, field

from tfmicle import model_format as mf
from tfmicle.cli import UsageError
from tfmicle.tasks import MULTICLASS


class ScoreError(UsageError, ValueError):
    """A user mistake in the scoring input (one line, exit 2)."""


@dataclass
class ScoringModel:
    path: str
    version: int | None
    class_names: list[str]
    task: str
    image_size: int | None
    metadata: dict
    _loaded: object = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def preprocessed_fn(self):
        """predict_preprocessed (pixels [B, S, S, 3]) when the model has it."""
        if self.image_size and hasattr(self._loaded, mf.PREPROCESSED_FUNCTION):
            return getattr(self._loaded, mf.PREPROCESSED_FUNCTION)
        return None

    @property
    def encoded_fn(self):
        return self._loaded.signatures[mf.SIGNATURE]

    @property
    def explain_fn(self):
        """serving_explain (Grad-CAM) when the model was exported with it, else None."""
        return self._loaded.signatures.get(mf.EXPLAIN_SIGNATURE)


def load_model(path: str) -> ScoringModel:
    """Loads an exported model (tfmicle.export's layout, or any SavedModel following
    the serving contract)."""
    import tensorflow as tf
    vdir, version = mf.resolve_version(path)
    metadata = mf.read_metadata(vdir)
    loaded = tf.saved_model.load(vdir)
    if mf.SIGNATURE not in loaded.signatures:
        raise ScoreError(f"{vdir} has no {mf.SIGNATURE} signature")
    names = mf.read_labels(vdir) or metadata.get("class_names")
    if not names:
        out = call_encoded(loaded.signatures[mf.SIGNATURE], mf.probe_images()[:1])
        names = [str(i) for i in range(out.shape[1])]
    return ScoringModel(vdir, version, list(names), metadata.get("task", MULTICLASS),
                        metadata.get("image_size"), metadata, loaded)


def call_encoded(fn, images):
    """Encoded images through a serving signature -> its probabilities (numpy)."""
    return call_encoded_outputs(fn, images)[mf.PROBABILITIES_OUTPUT]


def call_encoded_outputs(fn, images) -> dict:
    """Encoded images through a serving signature -> {"probabilities": [B, K], and
    "embedding": [B, D] when the model has one} (numpy). A model whose one output has
    another name gives that output as the probabilities."""
    import tensorflow as tf
    (name, _), = fn.structured_input_signature[1].items()
    out = fn(**{name: tf.constant(list(images) if not tf.is_tensor(images) else images)})
    key = mf.PROBABILITIES_OUTPUT if mf.PROBABILITIES_OUTPUT in out else next(iter(out))
    res = {mf.PROBABILITIES_OUTPUT: out[key].numpy()}
    if mf.EMBEDDING_OUTPUT in out:
        res[mf.EMBEDDING_OUTPUT] = out[mf.EMBEDDING_OUTPUT].numpy()
    return res


__all__ = ["ScoreError", "ScoringModel", "load_model", "call_encoded", "call_encoded_outputs"]
