"""The training-run machinery shared by pretraining and fine-tuning: the strategy,
checkpoints every N steps with optimizer state, exact resume, TensorBoard, stop on NaN,
and a step-budgeted ``fit``. The run folder's files are tfmicle.rundir's (its
prepare_model_dir, latest_checkpoint and checkpoint_manager are used from here too).
Map: docs/architecture.md."""
from __future__ import annotations

import logging
import math
import os

import keras
import tensorflow as tf

from tfmicle.config import Config
from tfmicle.rundir import (LOGS_DIR, checkpoint_manager, checkpoint_step, latest_checkpoint,
                            prepare_model_dir)

log = logging.getLogger(__name__)


class NaNLossError(RuntimeError):
    """Training produced a non-finite loss and was stopped."""


class StepCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint (model + optimizer, numbered by the global step) every
    `every` steps and at the last step, and stops training at `total_steps` and on a
    non-finite loss."""

    def __init__(self, manager: tf.train.CheckpointManager, every: int, total_steps: int):
        super().__init__()
        self.manager = manager
        self.every = max(int(every), 1)
        self.total_steps = int(total_steps)
        self.nan_at: int | None = None

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_at = step
            self.model.stop_training = True
            return
        if step % self.every == 0 or step >= self.total_steps:
            self.manager.save(checkpoint_number=step)
        if step >= self.total_steps:
            self.model.stop_training = True


def run_strategy(cfg: Config) -> tf.distribute.Strategy:
    """The run's tf.distribute strategy (distribute.make_strategy), checking that the
    global batch splits evenly over its replicas."""
    from tfmicle.config import ConfigError
    from tfmicle.distribute import make_strategy
    strategy = make_strategy(cfg.distribute.strategy, cfg.distribute.tpu,
                             cfg.distribute.num_cpu_devices)
    if cfg.train.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by "
                          f"{strategy.num_replicas_in_sync} replicas")
    return strategy


def fit_steps(model: keras.Model, dataset: tf.data.Dataset, total_steps: int, model_dir: str,
              checkpoint_steps: int, log_steps: int, keep_checkpoints: int = 3,
              validation_data=None, validation_steps: int | None = None,
              callbacks: list | None = None, verbose: int = 1) -> dict:
    """Trains `model` (compiled, variables built) until its optimizer has made
    total_steps steps, resuming from the latest checkpoint in model_dir.

    Returns {"start_step", "end_step", "history"}; raises NaNLossError on a NaN loss.
    """
    ckpt, manager = checkpoint_manager(model, model_dir, keep_checkpoints)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed from %s", manager.latest_checkpoint)
    start = int(model.optimizer.iterations.numpy())
    if start >= total_steps:
        log.info("already at step %d of %d: nothing to train", start, total_steps)
        return {"start_step": start, "end_step": start, "history": {}}
    chunk = max(min(int(log_steps), total_steps), 1)
    saver = StepCheckpoint(manager, checkpoint_steps, total_steps)
    cbs = [saver, keras.callbacks.TensorBoard(os.path.join(model_dir, LOGS_DIR),
                                              update_freq="epoch", write_graph=False)]
    cbs += list(callbacks or [])
    hist = model.fit(dataset, epochs=math.ceil(total_steps / chunk), steps_per_epoch=chunk,
                     initial_epoch=start // chunk, validation_data=validation_data,
                     validation_steps=validation_steps, callbacks=cbs, verbose=verbose,
                     shuffle=False)  # the pipelines shuffle (seeded) themselves
    end = int(model.optimizer.iterations.numpy())
    if saver.nan_at is not None:
        raise NaNLossError(f"loss became NaN/inf at step {saver.nan_at}; stopped "
                           f"(last good checkpoint: {manager.latest_checkpoint})")
    return {"start_step": start, "end_step": end, "history": hist.history}


__all__ = ["NaNLossError", "StepCheckpoint", "run_strategy", "fit_steps",
           # the run folder's, used through the runner by both trainers
           "prepare_model_dir", "latest_checkpoint", "checkpoint_manager", "checkpoint_step"]
