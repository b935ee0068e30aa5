"""One served model version: a view of the one loaded model (tfmicle.model_load: the
contract, checked at load time, and the smoke test) with the name and version the
repository serves it under. Map: docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tfmicle.model_format import EXPLAIN_SIGNATURE
from tfmicle.model_load import ContractError, LoadedModel, TensorInfo, encoded_outputs, load

log = logging.getLogger(__name__)

class ModelLoadError(Exception):
    """The version folder is not a SavedModel that follows the contract."""


@dataclass
class ServedModel:
    name: str
    version: int
    model: LoadedModel = field(repr=False)
    loaded_at: float = field(default_factory=time.time)

    @property
    def path(self) -> str:
        return self.model.path

    @property
    def input(self) -> TensorInfo:
        return self.model.input

    @property
    def output(self) -> TensorInfo:
        return self.model.output

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def can_explain(self) -> bool:
        return self.model.explain_fn is not None

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> float32 [len(images), K]. Runs the model (blocking)."""
        return self.model.predict(images)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of serving_default's outputs (the probabilities, maybe "embedding")."""
        return tuple(self.model.signature.structured_outputs)

    def predict_outputs(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Encoded images -> {"probabilities": [n, K], "embedding": [n, D] when the
        model has one}, from one call of the signature (blocking)."""
        return encoded_outputs(self.model.signature, images)

    def explain(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Grad-CAM of the top class (LoadedModel.explain); RuntimeError without it."""
        if not self.can_explain:
            raise RuntimeError(f"version {self.version} has no '{EXPLAIN_SIGNATURE}' signature")
        return self.model.explain(images)


def load_version(version_dir: str | os.PathLike, name: str, version: int) -> ServedModel:
    """Load, check the contract, run the smoke test. Raises ModelLoadError. The folder
    may be a URL (gs://, ram://)."""
    started = time.perf_counter()
    try:
        model = load(version_dir)
    except ContractError as e:  # serving's refusal: this version only, the server goes on
        raise ModelLoadError(str(e)) from None
    log.info(
        "loaded %s version %d from %s: input '%s', output '%s' [batch, %d], %.1fs",
        name, version, model.path, model.input.name, model.output.name, model.num_classes,
        time.perf_counter() - started,
    )
    return ServedModel(name=name, version=version, model=model)


__all__ = ["ModelLoadError", "ServedModel", "TensorInfo", "load_version"]
