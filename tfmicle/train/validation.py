"""Validation during fine-tuning: the eval split's batches, the validation metrics
(val_loss with the training loss and uncertainty policy; image and case AUC, accuracy)
and the Keras callback that validates every N steps, keeps the best checkpoint and
stops early. Map: docs/architecture.md."""
from __future__ import annotations

import logging
import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmicle import fileio
from tfmicle import metrics as M
from tfmicle.config import Config
from tfmicle.data.pipeline import PipelineConfig, evaluation
from tfmicle.data.tfds_source import TfdsSource
from tfmicle.distribute import chief_decides
from tfmicle.rundir import (BEST_JSON, BEST_PREFIX, LOGS_DIR, append_validation, read_best, write_best,
                            write_json)
from tfmicle.tasks import MULTICLASS, probabilities, task_loss

log = logging.getLogger(__name__)


def metric_mode(name: str) -> str:
    """"min" for losses, "max" for everything else."""
    return "min" if name.endswith("loss") else "max"


def eval_batches(data_dir: str, split: str, num_classes: int, batch_size: int,
                 image_size: int, tfds: TfdsSource | None = None) -> tf.data.Dataset:
    """pipeline.evaluation of a split (of data_dir's records, or of the TFDS dataset
    tfds): every image once through the eval preprocessing."""
    return evaluation(PipelineConfig(data_dir, split, batch_size, image_size, tfds=tfds),
                      num_classes)


def validation_batches(cfg: Config, num_classes: int, tfds: TfdsSource | None = None
                       ) -> tf.data.Dataset:
    """What a fine-tuning run validates on: eval_batches of cfg.data.eval_split, the
    first cfg.train.eval_steps batches (0: all)."""
    ds = eval_batches(cfg.data.dir, cfg.data.eval_split, num_classes, cfg.train.batch_size,
                      cfg.data.image_size, tfds)
    return ds.take(cfg.train.eval_steps) if cfg.train.eval_steps else ds


def validation_metrics(task: str, logits: np.ndarray, labels: np.ndarray,
                       case_ids, policy: str, auc_indices) -> dict:
    """val_loss (the training loss, same uncertainty policy) and image / case metrics
    (definite labels only)."""
    loss = float(task_loss(task, tf.constant(labels), tf.constant(logits), policy))
    probs = probabilities(task, tf.constant(logits)).numpy()
    img = M.classification_metrics(task, labels, probs, auc_indices, per_class=False)
    _, cprobs, clabels, _ = M.aggregate_cases(case_ids, probs, labels)
    case = M.classification_metrics(task, clabels, cprobs, auc_indices, per_class=False)
    out = {"val_loss": loss, "val_auc": img["mean_auc"], "val_pr_auc": img["mean_pr_auc"],
           "val_case_auc": case["mean_auc"]}
    if task == MULTICLASS:
        out.update(val_accuracy=img["top1_accuracy"], val_top3_accuracy=img["top3_accuracy"],
                   val_case_accuracy=case["top1_accuracy"])
    return out


class Validation(keras.callbacks.Callback):
    """Validates every `every` steps and at the last step; keeps the best checkpoint
    (best/ckpt + best/state.json) by cfg.finetune.best_metric; stops after
    cfg.finetune.early_stopping_patience validations without improvement (0 = never).
    val_loss uses cfg.finetune.uncertainty_policy. State survives a resume (best/state.json).

    The state is read from cfg.model_dir and everything is written to out_dir (model_dir
    when empty): a multi-worker run's other workers validate too (they must agree on
    early stopping) but write to a temporary folder (runner.output_dir).

    dataset: batches of the eval split (validation_batches); task and auc_indices (the
    classes val_auc averages over) are the dataset's; total_steps the run's."""

    def __init__(self, dataset: tf.data.Dataset, cfg: Config, *, task: str,
                 auc_indices: Sequence[int], every: int, total_steps: int, out_dir: str = ""):
        super().__init__()
        f = cfg.finetune
        self.dataset = dataset
        self.every = max(int(every), 1)
        self.total_steps = int(total_steps)
        self.task = task
        self.policy = f.uncertainty_policy
        self.auc_indices = list(auc_indices)
        self.best_metric = f.best_metric
        self.mode = metric_mode(f.best_metric)
        self.patience = int(f.early_stopping_patience)
        self.model_dir = cfg.model_dir
        self.out_dir = out_dir or cfg.model_dir
        self.image_size = cfg.data.image_size
        self.state = read_best(cfg.model_dir)
        self.last: dict | None = None
        self.last_step = -1
        self.writer = tf.summary.create_file_writer(
            fileio.join(self.out_dir, LOGS_DIR, "validation"))
        self._predict = None

    def _predict_fn(self):
        if self._predict is None:
            model = self.model
            self._predict = tf.function(
                lambda x: model(x, training=False), reduce_retracing=True,
                input_signature=[tf.TensorSpec([None, self.image_size, self.image_size, 3],
                                               tf.float32)])
        return self._predict

    def run(self) -> dict:
        predict = self._predict_fn()
        logits, labels, cases = [], [], []
        for batch in self.dataset:
            logits.append(predict(batch["image"]).numpy())
            labels.append(batch["label_class" if self.task == MULTICLASS else "label_multi"]
                          .numpy())
            cases.extend(c.decode() for c in batch["case_id"].numpy())
        if not logits:
            raise FileNotFoundError("the eval split has no images")
        values = validation_metrics(self.task, np.concatenate(logits), np.concatenate(labels),
                                    cases, self.policy, self.auc_indices)
        return values

    def _better(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        best = self.state.get("value")
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best

    def evaluate(self, step: int) -> None:
        values = self.run()
        self.last, self.last_step = values, step
        append_validation(self.out_dir, {"step": step, **values})
        with self.writer.as_default(step=step):
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    tf.summary.scalar(k, v)
        self.writer.flush()
        value = values.get(self.best_metric)
        if self._better(value):
            write_best(self.model, self.out_dir)
            self.state.update({"metric": self.best_metric, "mode": self.mode, "value": value,
                               "step": step, "metrics": values, "checkpoint": BEST_PREFIX,
                               "evals_since_best": 0})
            log.info("step %d: %s", step, _fmt(values) + f" (best {self.best_metric})")
        else:
            self.state["evals_since_best"] = int(self.state.get("evals_since_best", 0)) + 1
            log.info("step %d: %s", step, _fmt(values))
        # Multi-worker: the chief's call for all (per-replica batch norm keeps each
        # worker's moving statistics, so other workers' metrics may differ slightly, and
        # a worker that stopped alone would leave the others waiting).
        stale = bool(self.patience) and self.state["evals_since_best"] >= self.patience
        if chief_decides(self.model.distribute_strategy, stale):
            self.state["early_stopped_at"] = step
            self.model.stop_training = True
            log.info("early stopping at step %d: no better %s in %d validations (best %.4f "
                     "at step %d)", step, self.best_metric, self.patience,
                     self.state.get("value", math.nan), self.state.get("step", -1))
        write_json(fileio.join(self.out_dir, BEST_JSON), self.state)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self.last_step and (step % self.every == 0 or step >= self.total_steps):
            self.evaluate(step)


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items()
                     if v is not None and math.isfinite(v))


__all__ = ["metric_mode", "eval_batches", "validation_batches", "validation_metrics",
           "Validation"]
