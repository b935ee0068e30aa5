"""Scoring: the exported model as the scorer sees it, a view of the one loaded model
(tfmicle.model_load: tfmicle.model_format's layout, or any SavedModel that follows
the serving contract, checked as the server checks it). Map: docs/architecture.md."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tfmicle import model_format as mf
from tfmicle import model_load
from tfmicle.cli import UsageError


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
    _loaded: model_load.LoadedModel | None = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def preprocessed_fn(self) -> Any:
        """predict_preprocessed (pixels [B, S, S, 3]) when the model has it."""
        # None without a loaded model too: tables and sources take a view made of names
        return self._loaded.preprocessed_fn if self._loaded is not None else None

    @property
    def encoded_fn(self) -> Any:
        return self._loaded.signature

    @property
    def has_embedding(self) -> bool:
        """serving_default has an ``embedding`` output (similar cases need one)."""
        outputs = getattr(self.encoded_fn, "structured_outputs", None) if self._loaded else None
        return isinstance(outputs, dict) and mf.EMBEDDING_OUTPUT in outputs

    @property
    def explain_fn(self) -> Any:
        """serving_explain (Grad-CAM) when the model was exported with it, else None."""
        return self._loaded.explain_fn


def load_model(path: str) -> ScoringModel:
    """Loads an exported model: a published version folder, or a model folder's highest
    published version (FileNotFoundError, saying why, when there is none). A model that
    breaks the contract is a ScoreError with the reason the server gives."""
    vdir, version = mf.resolve_version(path)
    try:
        loaded = model_load.load(vdir)
    except model_load.ContractError as e:  # score's refusal: one line, exit 2
        raise ScoreError(str(e)) from None
    return ScoringModel(vdir, version, list(loaded.labels), loaded.task, loaded.image_size,
                        loaded.metadata, loaded)


def call_encoded(fn: Any, images: Any) -> Any:
    """Encoded images through a serving signature -> its probabilities (numpy)."""
    return call_encoded_outputs(fn, images)[mf.PROBABILITIES_OUTPUT]


def call_encoded_outputs(fn: Any, images: Any) -> dict:
    """Encoded images through a serving signature -> {"probabilities": [B, K], and
    "embedding": [B, D] when the model has one} (numpy). A model whose one output has
    another name gives that output as the probabilities."""
    return model_load.encoded_outputs(fn, images)


__all__ = ["ScoreError", "ScoringModel", "load_model", "call_encoded", "call_encoded_outputs"]
