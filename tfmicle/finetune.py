"""Supervised fine-tuning from a Config (``mode: finetune``): initialise the encoder
(tfmicle pretraining checkpoint, ImageNet keras.applications ResNet50, or scratch),
freeze by stage, train on a label fraction through the shared runner, validate on the
eval split every epoch, keep the best checkpoint by a chosen metric and optionally stop
early.

Files in the model dir, besides the runner's (config.yaml, checkpoints/, logs/):
- ``finetune.json``: task, class names and the data the run was trained on;
- ``validation.jsonl``: one line per validation ({"step", metric: value, ...});
- ``best/ckpt.*`` and ``best.json``: the best checkpoint by finetune.best_metric and
  its metrics (what ``tfmicle.export`` exports by default).
"""
from __future__ import annotations

import json
import logging
import math
import os

import keras
import numpy as np
import tensorflow as tf
import yaml

from tfmicle import build
from tfmicle import metrics as M
from tfmicle import runner
from tfmicle.config import Config, ConfigError, load_config
from tfmicle.data import records
from tfmicle.data.pipeline import PipelineConfig, evaluation, read_cases, supervised
from tfmicle.data.pipeline import image_examples as pipeline_image_examples
from tfmicle.models.classifier import EXCLUDE, IMAGENET_ENCODER, Classifier
from tfmicle.tasks import MULTICLASS, probabilities, task_loss
from tfmicle.models.resnet import small_stem
from tfmicle.pretrain import restore_encoder

log = logging.getLogger(__name__)

FINETUNE_JSON = "finetune.json"
VALIDATION_LOG = "validation.jsonl"
BEST_JSON = "best.json"
BEST_PREFIX = os.path.join("best", "ckpt")
MULTICLASS_ONLY_METRICS = ("val_accuracy", "val_top3_accuracy", "val_case_accuracy")


# --------------------------------------------------------------------------- helpers

def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(M.to_json_safe(data), f, indent=2)
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def metric_mode(name: str) -> str:
    """"min" for losses, "max" for everything else."""
    return "min" if name.endswith("loss") else "max"


def resolve_auc_classes(spec: str, class_names: list[str]) -> list[str]:
    """finetune.auc_classes ("a,b" or "" for all) -> class names, checked."""
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ConfigError(f"finetune.auc_classes: unknown class {unknown[0]!r} "
                          f"(classes: {', '.join(class_names)})")
    return names or list(class_names)


def count_labeled(data_dir: str, split: str, task: str,
                  case_ids: tuple[str, ...] | None) -> tuple[int, int]:
    """(cases, images) of a split (or of the given cases) that carry a label for task."""
    ds = read_cases(PipelineConfig(data_dir, split, case_ids=case_ids), shuffle=False)

    def labeled(c):
        ok = (c["label_class"] >= 0) if task == MULTICLASS else (tf.size(c["label_multi"]) > 0)
        ok = tf.cast(ok, tf.int64)
        return ok, ok * tf.cast(tf.shape(c["images"])[0], tf.int64)
    cases, images = ds.map(labeled).reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda acc, x: (acc[0] + x[0], acc[1] + x[1]))
    return int(cases), int(images)


def image_examples(data_dir: str, split: str, num_classes: int,
                   case_ids: tuple[str, ...] | None = None) -> tf.data.Dataset:
    """pipeline.image_examples of a split (label_multi padded to num_classes)."""
    return pipeline_image_examples(PipelineConfig(data_dir, split, case_ids=case_ids),
                                   num_classes)


def eval_batches(data_dir: str, split: str, num_classes: int, batch_size: int,
                 image_size: int) -> tf.data.Dataset:
    """pipeline.evaluation of a split: every image once through the eval preprocessing."""
    return evaluation(PipelineConfig(data_dir, split, batch_size, image_size), num_classes)


def _pretraining_config(checkpoint: str) -> Config | None:
    """The resolved config of the pretraining run a checkpoint path belongs to."""
    path = os.path.abspath(checkpoint)
    for d in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        f = os.path.join(d, runner.CONFIG_FILE)
        if os.path.isfile(f):
            try:
                return load_config(f)
            except ConfigError:
                return None
    return None


def check_encoder_compatible(cfg: Config, pre: Config, checkpoint: str) -> None:
    """ConfigError naming the first encoder setting that differs from pretraining."""
    mine, theirs = cfg.model, pre.model
    for key in ("depth", "width_multiplier", "sk_ratio"):
        if getattr(mine, key) != getattr(theirs, key):
            raise ConfigError(f"model.{key} is {getattr(mine, key)} but the checkpoint "
                              f"{checkpoint} was pretrained with {getattr(theirs, key)}")
    small = small_stem(cfg.data.image_size)
    if small != small_stem(pre.data.image_size):
        raise ConfigError(f"data.image_size {cfg.data.image_size} needs a "
                          f"{'3x3' if small else '7x7'} stem but the checkpoint was "
                          f"pretrained at {pre.data.image_size} px (other stem)")


def validate_config(cfg: Config, task: str) -> None:
    f = cfg.finetune
    if not 0 < cfg.data.label_fraction <= 1:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {cfg.data.label_fraction}")
    if not -1 <= f.fine_tune_after_block <= 4:
        raise ConfigError(f"finetune.fine_tune_after_block must be -1..4, got "
                          f"{f.fine_tune_after_block}")
    if f.init == "checkpoint" and not f.checkpoint:
        raise ConfigError("finetune.init is checkpoint but finetune.checkpoint is not set "
                          "(a pretraining model dir), or use init: imagenet | scratch")
    if f.init == "imagenet" and (cfg.model.depth != 50 or cfg.model.width_multiplier != 1
                                 or cfg.model.sk_ratio != 0):
        raise ConfigError("finetune.init: imagenet uses keras.applications ResNet50: set "
                          "model.depth 50, model.width_multiplier 1, model.sk_ratio 0")
    if task != MULTICLASS and f.best_metric in MULTICLASS_ONLY_METRICS:
        raise ConfigError(f"finetune.best_metric {f.best_metric} needs a multiclass task "
                          f"(this dataset is {task}); use val_auc or val_loss")
    if f.early_stopping_patience < 0:
        raise ConfigError("finetune.early_stopping_patience must be >= 0")
    if f.early_stopping_patience and not cfg.data.eval_split:
        raise ConfigError("finetune.early_stopping_patience needs data.eval_split")


# --------------------------------------------------------------------------- model

def build_model(cfg: Config, num_classes: int, task: str, initialise: bool = True,
                for_training: bool = True) -> Classifier:
    """The fine-tuning Classifier of a config. initialise: load the init weights
    (pretraining checkpoint or ImageNet); for_training: freeze by
    fine_tune_after_block and zero the head. Call inside the strategy scope."""
    f = cfg.finetune
    imagenet = f.init == "imagenet"
    weights = None
    if imagenet and initialise:
        weights = f.imagenet_weights or "imagenet"
        if f.imagenet_weights and not os.path.isfile(f.imagenet_weights):
            raise FileNotFoundError(f"finetune.imagenet_weights: {f.imagenet_weights} not found")
    model = build.classifier(cfg, num_classes, task, for_training, weights)
    if initialise and f.init == "checkpoint":
        pre = _pretraining_config(f.checkpoint)
        if pre is not None:
            check_encoder_compatible(cfg, pre, f.checkpoint)
        try:
            prefix = restore_encoder(model.encoder, f.checkpoint)
        except AssertionError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"checkpoint {f.checkpoint} does not match the encoder "
                              f"(model.* settings?): {first[:200]}") from None
        log.info("encoder initialised from %s", prefix)
    elif initialise and imagenet:
        log.info("encoder: keras.applications ResNet50 with ImageNet weights (%s)", weights)
    elif initialise:
        log.info("encoder initialised from scratch")
    return model


# --------------------------------------------------------------------------- validation

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
    (best/ckpt + best.json) by `best_metric`; stops after `patience` validations
    without improvement (0 = never). State survives a resume (best.json)."""

    def __init__(self, dataset: tf.data.Dataset, every: int, total_steps: int, task: str,
                 policy: str, auc_indices, best_metric: str, patience: int, model_dir: str,
                 image_size: int):
        super().__init__()
        self.dataset = dataset
        self.every = max(int(every), 1)
        self.total_steps = int(total_steps)
        self.task = task
        self.policy = policy
        self.auc_indices = list(auc_indices)
        self.best_metric = best_metric
        self.mode = metric_mode(best_metric)
        self.patience = int(patience)
        self.model_dir = model_dir
        self.image_size = image_size
        self.state = _read_json(os.path.join(model_dir, BEST_JSON)) or {}
        self.last: dict | None = None
        self.last_step = -1
        self.writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "validation"))
        self._predict = None

    def _predict_fn(self):
        if self._predict is None:
            model = self.model
            self._predict = tf.function(
                lambda x: model(x, training=False), reduce_retracing=True,
                input_signature=[tf.TensorSpec([None, self.image_size, self.image_size, 3],
                                               tf.float32)])
        return self._predict

    def run(self, step: int) -> dict:
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
        values = self.run(step)
        self.last, self.last_step = values, step
        with open(os.path.join(self.model_dir, VALIDATION_LOG), "a") as f:
            f.write(json.dumps(M.to_json_safe({"step": step, **values})) + "\n")
        with self.writer.as_default(step=step):
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    tf.summary.scalar(k, v)
        self.writer.flush()
        value = values.get(self.best_metric)
        if self._better(value):
            ckpt = tf.train.Checkpoint(model=self.model)
            _ = ckpt.save_counter  # created, so the best checkpoint restores like any other
            ckpt.write(os.path.join(self.model_dir, BEST_PREFIX))
            self.state.update({"metric": self.best_metric, "mode": self.mode, "value": value,
                               "step": step, "metrics": values, "checkpoint": BEST_PREFIX,
                               "evals_since_best": 0})
            log.info("step %d: %s", step, _fmt(values) + f" (best {self.best_metric})")
        else:
            self.state["evals_since_best"] = int(self.state.get("evals_since_best", 0)) + 1
            log.info("step %d: %s", step, _fmt(values))
        if self.patience and self.state["evals_since_best"] >= self.patience:
            self.state["early_stopped_at"] = step
            self.model.stop_training = True
            log.info("early stopping at step %d: no better %s in %d validations (best %.4f "
                     "at step %d)", step, self.best_metric, self.patience,
                     self.state.get("value", math.nan), self.state.get("step", -1))
        _write_json(os.path.join(self.model_dir, BEST_JSON), self.state)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self.last_step and (step % self.every == 0 or step >= self.total_steps):
            self.evaluate(step)


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items()
                     if v is not None and math.isfinite(v))


# --------------------------------------------------------------------------- training

def finetune(cfg: Config, callbacks: list | None = None, verbose: int = 1) -> dict:
    """Runs (or resumes) a fine-tuning run into cfg.model_dir; returns a summary like
    pretrain(): start_step, end_step, total_steps, history, checkpoint, plus
    best_checkpoint / best (metric, value, step), validation (last metrics) and
    early_stopped."""
    if not cfg.data.dir:
        raise FileNotFoundError("data.dir is not set (a data_prep output folder)")
    info = records.load_dataset_info(cfg.data.dir)
    splits = info.get("splits", {})
    for split in (cfg.data.train_split, cfg.data.eval_split):
        if split and split not in splits:
            raise FileNotFoundError(f"split '{split}' not in {cfg.data.dir} "
                                    f"(has: {', '.join(splits)})")
    task = info.get("task", MULTICLASS)
    class_names = list(info.get("class_names", []))
    if not class_names:
        raise ConfigError(f"{cfg.data.dir}/dataset.json has no class_names: nothing to "
                          "fine-tune on")
    validate_config(cfg, task)
    auc_classes = resolve_auc_classes(cfg.finetune.auc_classes, class_names)
    auc_indices = [class_names.index(c) for c in auc_classes]

    old = os.path.join(cfg.model_dir, runner.CONFIG_FILE)
    if os.path.isfile(old):
        with open(old) as fh:
            previous = yaml.safe_load(fh) or {}
        if previous.get("mode", "pretrain") != "finetune":
            raise ConfigError(f"{cfg.model_dir} holds a pretraining run; fine-tune into "
                              "a new model dir (finetune.checkpoint points at it)")
    best_state = _read_json(os.path.join(cfg.model_dir, BEST_JSON)) or {}
    case_ids = None
    if cfg.data.label_fraction < 1:
        case_ids = tuple(records.read_subset(cfg.data.dir, cfg.data.train_split,
                                             cfg.data.label_fraction))
    runner.prepare_model_dir(cfg)
    strategy = runner.run_strategy(cfg)
    n_cases, n_images = count_labeled(cfg.data.dir, cfg.data.train_split, task, case_ids)
    if n_images == 0:
        raise ConfigError(f"no labeled images in split '{cfg.data.train_split}' of "
                          f"{cfg.data.dir} (label_fraction {cfg.data.label_fraction})")
    total, warmup = build.schedule_steps(cfg, n_images)
    epoch_steps = max(int(math.ceil(n_images / cfg.train.batch_size)), 1)
    _write_json(os.path.join(cfg.model_dir, FINETUNE_JSON), {
        "task": task, "class_names": class_names, "num_classes": len(class_names),
        "data_dir": os.path.abspath(cfg.data.dir), "train_split": cfg.data.train_split,
        "eval_split": cfg.data.eval_split, "label_fraction": cfg.data.label_fraction,
        "train_cases": n_cases, "train_images": n_images, "auc_classes": auc_classes,
        "image_size": cfg.data.image_size, "init": cfg.finetune.init,
        "encoder": IMAGENET_ENCODER if cfg.finetune.init == "imagenet" else "resnet",
        "checkpoint": cfg.finetune.checkpoint})

    # The buffer never needs more than the labeled images: a larger one would make the
    # first batch wait for many filtered passes over the split (small label fractions).
    pcfg = PipelineConfig(cfg.data.dir, cfg.data.train_split, cfg.train.batch_size,
                          cfg.data.image_size, max(min(cfg.data.shuffle_buffer, n_images), 1),
                          cfg.data.cache, cfg.train.seed, case_ids)
    if case_ids is not None and not cfg.data.cache:
        log.info("label fraction %g: every pass re-reads the split to filter it; "
                 "data.cache: true keeps the subset in memory", cfg.data.label_fraction)
    ds = supervised(pcfg, build.augment_config(cfg), task)
    resuming = runner.latest_checkpoint(cfg.model_dir) is not None
    keras.utils.set_random_seed(cfg.train.seed)
    with strategy.scope():
        model = build_model(cfg, len(class_names), task, initialise=not resuming)
        opt = build.optimizer(cfg, total, warmup, EXCLUDE)  # + keras.applications' BNs
        model.compile(optimizer=opt, jit_compile=cfg.train.jit_compile)
        opt.build(model.trainable_variables)

    cbs = list(callbacks or [])
    validator = None
    if cfg.data.eval_split:
        vds = eval_batches(cfg.data.dir, cfg.data.eval_split, len(class_names),
                           cfg.train.batch_size, cfg.data.image_size)
        if cfg.train.eval_steps:
            vds = vds.take(cfg.train.eval_steps)
        validator = Validation(vds, cfg.finetune.eval_every_steps or epoch_steps, total, task,
                               cfg.finetune.uncertainty_policy, auc_indices,
                               cfg.finetune.best_metric, cfg.finetune.early_stopping_patience,
                               cfg.model_dir, cfg.data.image_size)
        cbs.insert(0, validator)
    elif cfg.finetune.best_metric != "val_loss":
        log.warning("no data.eval_split: finetune.best_metric %s is not used; export takes "
                    "the latest checkpoint", cfg.finetune.best_metric)
    log.info("fine-tuning (%s, %d classes, init %s, fine_tune_after_block %d): %d labeled "
             "images in %d cases (label fraction %g), %d steps of batch %d on %d replica(s), "
             "%d warmup steps, validation every %d steps", task, len(class_names),
             cfg.finetune.init, cfg.finetune.fine_tune_after_block, n_images, n_cases,
             cfg.data.label_fraction, total, cfg.train.batch_size,
             strategy.num_replicas_in_sync, warmup,
             cfg.finetune.eval_every_steps or epoch_steps)

    if best_state.get("early_stopped_at") is not None and resuming:
        ckpt, manager = runner.checkpoint_manager(model, cfg.model_dir, cfg.train.keep_checkpoints)
        ckpt.restore(manager.latest_checkpoint).expect_partial()
        step = int(model.optimizer.iterations.numpy())
        log.info("this run stopped early at step %d: nothing to train", step)
        result = {"start_step": step, "end_step": step, "history": {}}
    else:
        result = runner.fit_steps(model, ds, total, cfg.model_dir, cfg.train.checkpoint_steps,
                                  cfg.train.log_steps, cfg.train.keep_checkpoints, None, None,
                                  cbs, verbose)
    state = validator.state if validator is not None else best_state
    best_prefix = os.path.join(cfg.model_dir, BEST_PREFIX)
    result.update({
        "model_dir": cfg.model_dir, "total_steps": total, "task": task,
        "class_names": class_names, "train_images": n_images, "train_cases": n_cases,
        "checkpoint": runner.latest_checkpoint(cfg.model_dir),
        "best_checkpoint": best_prefix if tf.io.gfile.exists(best_prefix + ".index") else None,
        "best": {k: state.get(k) for k in ("metric", "value", "step")} if state else None,
        "validation": validator.last if validator is not None else None,
        "early_stopped": state.get("early_stopped_at") is not None if state else False,
    })
    result["final_metrics"] = {k: float(v[-1]) for k, v in result["history"].items() if v}
    log.info("fine-tuning done at step %d%s", result["end_step"],
             f"; best {state['metric']}={state['value']:.4f} at step {state['step']}"
             if state.get("value") is not None else "")
    return result


# --------------------------------------------------------------------------- loading

def run_info(model_dir: str) -> tuple[Config, dict]:
    """(resolved config, finetune.json) of a fine-tuning run; FileNotFoundError /
    ConfigError when model_dir is not one."""
    cfg_path = os.path.join(model_dir, runner.CONFIG_FILE)
    info_path = os.path.join(model_dir, FINETUNE_JSON)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{model_dir} is not a training run (no {runner.CONFIG_FILE})")
    cfg = load_config(cfg_path)
    if cfg.mode != "finetune" or not os.path.isfile(info_path):
        raise ConfigError(f"{model_dir} is not a fine-tuning run (mode: {cfg.mode}); "
                          "export a model fine-tuned with mode: finetune")
    return cfg, _read_json(info_path)


def resolve_checkpoint(model_dir: str, which: str = "auto") -> tuple[str, str]:
    """("best" | "latest" | "path", prefix) for which = auto (best if kept, else latest),
    best, latest, or a checkpoint prefix / folder."""
    best = os.path.join(model_dir, BEST_PREFIX)
    has_best = tf.io.gfile.exists(best + ".index")
    if which in ("auto", "best"):
        if has_best:
            return "best", best
        if which == "best":
            raise FileNotFoundError(f"{model_dir} has no best checkpoint (no eval split?); "
                                    "use --checkpoint latest")
    if which in ("auto", "latest"):
        prefix = runner.latest_checkpoint(model_dir)
        if prefix is None:
            raise FileNotFoundError(f"{model_dir} has no checkpoint yet")
        return "latest", prefix
    prefix = runner.latest_checkpoint(which)
    if prefix is None:
        raise FileNotFoundError(f"no checkpoint at {which}")
    return "path", prefix


def load_classifier(model_dir: str, checkpoint: str = "auto"
                    ) -> tuple[Classifier, Config, dict, str]:
    """Rebuilds a fine-tuned Classifier (inference: no freezing, plain BN) and restores
    its weights. Returns (model, config, finetune.json, checkpoint prefix)."""
    cfg, info = run_info(model_dir)
    _, prefix = resolve_checkpoint(model_dir, checkpoint)
    model = build_model(cfg, info["num_classes"], info["task"], initialise=False,
                        for_training=False)
    status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ConfigError(f"checkpoint {prefix} does not match the run's model: "
                          f"{str(e).splitlines()[0][:200]}") from None
    return model, cfg, info, prefix


def validation_for_step(model_dir: str, step: int | None) -> dict | None:
    """The validation metrics logged at a step (None when not validated there)."""
    path = os.path.join(model_dir, VALIDATION_LOG)
    if step is None or not os.path.isfile(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if row.get("step") == step:
                found = row
    return found


__all__ = ["finetune", "build_model", "load_classifier", "run_info", "resolve_checkpoint",
           "validation_metrics", "Validation", "count_labeled", "resolve_auc_classes",
           "image_examples", "eval_batches",
           "FINETUNE_JSON", "BEST_JSON", "VALIDATION_LOG", "BEST_PREFIX"]
