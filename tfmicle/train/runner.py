"""The training-run machinery shared by pretraining and fine-tuning: the strategy,
checkpoints every N steps with optimizer state, exact resume, TensorBoard, stop on NaN,
and a step-budgeted ``fit``. The run folder's files are tfmicle.rundir's (its
prepare_model_dir, latest_checkpoint and checkpoint_manager are used from here too).

Multi-worker runs (distribute.strategy: multiworker): every worker runs the same code,
restores the same checkpoint from the shared model_dir and takes part in every save
(saving reads synchronised variables through collectives), but only the chief writes
into model_dir; the others write to a temporary folder that is removed after each
save and at the end, as in TensorFlow's multi-worker Keras guide.

model_dir may be a URL (gs://, ram://): checkpoints and TensorBoard go through
TensorFlow's filesystems, the run folder's other files through tfmicle.fileio.
Map: docs/architecture.md."""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Iterator

import keras
import tensorflow as tf

from tfmicle import cli, fileio
from tfmicle.config import Config
from tfmicle.distribute import (StrategyError, gather_from_workers, is_chief, is_multi_worker,
                                shard_by_data, worker_name)
from tfmicle.rundir import (LOGS_DIR, checkpoint_manager, checkpoint_step, latest_checkpoint,
                            prepare_model_dir)

log = logging.getLogger(__name__)


class NaNLossError(RuntimeError):
    """Training produced a non-finite loss and was stopped."""


class StepCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint (model + optimizer, numbered by the global step) every
    `every` steps and at the last step, and stops training at `total_steps` and on a
    non-finite loss."""

    def __init__(self, manager: tf.train.CheckpointManager, every: int, total_steps: int,
                 scratch: bool = False):
        super().__init__()
        self.manager = manager
        self.scratch = scratch  # a non-chief worker: delete what it saved
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
            if self.scratch:
                fileio.rmtree(self.manager.directory)
        if step >= self.total_steps:
            self.model.stop_training = True


class PlainProgress(keras.callbacks.Callback):
    """verbose=2 of fit_steps: instead of Keras's bar, one plain line per log_steps on
    stdout (step, loss and metrics, steps/s, ETA; tfmicle.cli.ProgressLines), readable
    in a pipe or a log file."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = int(total_steps)
        self.lines: cli.ProgressLines | None = None

    def on_train_begin(self, logs=None):
        self.lines = cli.ProgressLines(self.total_steps, "step", every=0,
                                       start=int(self.model.optimizer.iterations.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        values = {}
        for k, v in (logs or {}).items():
            try:
                values[k] = float(v)
            except (TypeError, ValueError):  # a non-scalar log entry: not for one line
                pass
        self.lines.update(int(self.model.optimizer.iterations.numpy()), **values)


def run_strategy(cfg: Config) -> tf.distribute.Strategy:
    """The run's tf.distribute strategy (distribute.make_strategy), checking that the
    global batch splits evenly over its replicas. Call it before any other TensorFlow
    op: MultiWorkerMirroredStrategy must configure the runtime first.

    `auto` settings are resolved here, in cfg, so config.yaml records what ran:
    distribute.strategy the one picked, train.precision auto -> distribute.auto_precision."""
    from tfmicle.config import ConfigError
    from tfmicle.distribute import auto_precision, auto_strategy, make_strategy
    if cfg.distribute.strategy == "auto":
        name, picked = auto_strategy(cfg.distribute.tpu)
        cfg.distribute.strategy = name
        strategy = picked or make_strategy(name, cfg.distribute.tpu,
                                           cfg.distribute.num_cpu_devices)
    else:
        strategy = make_strategy(cfg.distribute.strategy, cfg.distribute.tpu,
                                 cfg.distribute.num_cpu_devices)
    if cfg.train.precision == "auto":
        cfg.train.precision = auto_precision(strategy)
        log.info("train.precision auto: %s", cfg.train.precision)
    if cfg.train.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by "
                          f"{strategy.num_replicas_in_sync} replicas")
    return strategy


def fit_steps(model: keras.Model, dataset: tf.data.Dataset, cfg: Config, total_steps: int, *,
              validation_data: tf.data.Dataset | None = None,
              validation_steps: int | None = None, callbacks: list | None = None,
              verbose: int = 1, out_dir: str | None = None) -> dict:
    """Trains `model` (compiled, variables built) until its optimizer has made
    total_steps steps, resuming from the latest checkpoint in cfg.model_dir. From
    cfg.train: a checkpoint every checkpoint_steps (keep_checkpoints kept), one Keras
    epoch (progress, TensorBoard, validation_data) per log_steps.

    Multi-worker: every worker calls this with the same arguments (model_dir shared);
    only the chief writes there (see the module doc). out_dir: where this process writes
    (an output_dir the caller holds open); None opens one for the call.

    verbose: 0 silent, 1 Keras's progress bar, 2 one plain line per log_steps
    (PlainProgress: for pipes and log files).

    Returns {"start_step", "end_step", "history"}; raises NaNLossError on a NaN loss.
    """
    opened = contextlib.nullcontext(out_dir) if out_dir is not None else \
        output_dir(model.distribute_strategy, cfg.model_dir)
    with opened as out:
        return _fit(model, dataset, cfg, total_steps, out, validation_data=validation_data,
                    validation_steps=validation_steps, callbacks=callbacks, verbose=verbose)


@contextlib.contextmanager
def output_dir(strategy: tf.distribute.Strategy, model_dir: str) -> Iterator[str]:
    """Where this process writes the run's files: model_dir on the chief (and on one
    machine); on the other workers of a multi-worker run a temporary folder, removed
    on exit."""
    if is_chief(strategy):
        yield model_dir
        return
    tmp = tempfile.mkdtemp(prefix=f"tfmicle-{worker_name(strategy) or 'worker'}-")
    try:
        yield tmp
    finally:
        fileio.rmtree(tmp, ignore_errors=True)


def _fit_multi_worker(model: keras.Model) -> None:
    """Works around two gaps of Keras 3's fit under MultiWorkerMirroredStrategy
    (keras-team/keras#20585, #20329; MirroredStrategy takes other code paths):
    - before training, fit "symbolically builds" the model from a cross-replica reduce
      of a first batch, which fails on a dict batch. Our models are built before fit
      (build_all, optimizer.build), so there is nothing to build; the first batch is
      still drawn from a first iterator, as Keras does, so that training iterates the
      dataset's second iterator on every strategy (a reshuffling tf.data shuffle
      gives each iterator its own order).
    - fit reduces each step's logs with strategy.reduce(MEAN, value, axis=0), which
      fails on scalars: the steps return their logs as [1] tensors, so the reduce is
      the mean over replicas that MirroredStrategy reports.
    Patches this model instance only."""
    if not (model.built and model.optimizer.built):
        raise ValueError("build the model and its optimizer before a multi-worker fit")

    def draw_first_batch(iterator=None, data_batch=None):
        for _, _, it in iterator or ():
            next(it)
            break
    model._maybe_symbolic_build = draw_first_batch
    for name in ("train_step", "test_step"):
        step = getattr(model, name)
        setattr(model, name, lambda data, step=step: {
            k: tf.reshape(v, [1]) for k, v in step(data).items()})


def _fit(model: keras.Model, dataset: tf.data.Dataset, cfg: Config, total_steps: int,
         out_dir: str, *, validation_data: tf.data.Dataset | None,
         validation_steps: int | None, callbacks: list | None, verbose: int) -> dict:
    """fit_steps with the checkpoints and logs written into out_dir (model_dir on the
    chief, a temporary folder on other workers) and resumed from model_dir."""
    strategy = model.distribute_strategy
    model_dir, t = cfg.model_dir, cfg.train
    ckpt, manager = checkpoint_manager(model, out_dir, t.keep_checkpoints)
    resume = latest_checkpoint(model_dir)  # the chief's, on every worker
    if resume:
        ckpt.restore(resume).assert_existing_objects_matched()
        log.info("resumed from %s", resume)
    start = int(model.optimizer.iterations.numpy())
    steps = gather_from_workers(strategy, start)
    if len(set(steps)) > 1:
        raise StrategyError(f"the workers resumed from different steps {steps}: model_dir "
                            f"{model_dir} must be one folder every worker reads (a bucket "
                            f"or a shared disk)")
    if start >= total_steps:
        log.info("already at step %d of %d: nothing to train", start, total_steps)
        return {"start_step": start, "end_step": start, "history": {}}
    chunk = max(min(int(t.log_steps), total_steps), 1)
    saver = StepCheckpoint(manager, t.checkpoint_steps, total_steps,
                           scratch=out_dir != model_dir)
    cbs = [saver, keras.callbacks.TensorBoard(fileio.join(out_dir, LOGS_DIR),
                                              update_freq="epoch", write_graph=False)]
    cbs += list(callbacks or [])
    if verbose == 2:  # plain lines instead of Keras's bar (and its \r and colours)
        cbs.append(PlainProgress(total_steps))
        verbose = 0
    if validation_data is not None:
        validation_data = shard_by_data(validation_data)
    if is_multi_worker(strategy):
        _fit_multi_worker(model)
    hist = model.fit(shard_by_data(dataset), epochs=math.ceil(total_steps / chunk),
                     steps_per_epoch=chunk, initial_epoch=start // chunk,
                     validation_data=validation_data, validation_steps=validation_steps,
                     callbacks=cbs, verbose=verbose,
                     shuffle=False)  # the pipelines shuffle (seeded) themselves
    end = int(model.optimizer.iterations.numpy())
    if saver.nan_at is not None:
        raise NaNLossError(f"loss became NaN/inf at step {saver.nan_at}; stopped "
                           f"(last good checkpoint: {latest_checkpoint(model_dir)})")
    return {"start_step": start, "end_step": end, "history": hist.history}


__all__ = ["NaNLossError", "StepCheckpoint", "PlainProgress", "run_strategy", "fit_steps",
           "is_chief", "output_dir",
           # the run folder's, used through the runner by both trainers
           "prepare_model_dir", "latest_checkpoint", "checkpoint_manager", "checkpoint_step"]
