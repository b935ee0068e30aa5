"""Old import path (experiments/ use it): the code is tfmicle.train.finetune, with
validation in tfmicle.train.validation and the run-folder readers in tfmicle.rundir;
see docs/architecture.md. A shim, to be removed once nothing imports it."""
from tfmicle.rundir import load_classifier, resolve_checkpoint, run_info  # noqa: F401
from tfmicle.train.finetune import *  # noqa: F401,F403
from tfmicle.train.finetune import __all__ as _moved
from tfmicle.train.validation import Validation, eval_batches, validation_metrics  # noqa: F401

__all__ = [*_moved, "load_classifier", "resolve_checkpoint", "run_info", "Validation",
           "eval_batches", "validation_metrics"]
