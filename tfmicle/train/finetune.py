"""Supervised fine-tuning from a Config (``mode: finetune``): initialise the encoder
(tfmicle pretraining checkpoint, ImageNet keras.applications ResNet50, or scratch),
freeze by stage, train on a label fraction through the shared runner, validate on the
eval split every epoch, keep the best checkpoint by a chosen metric and optionally stop
early.

The run folder's files (finetune.json, validation.jsonl, best/) and their readers are
tfmicle.rundir's; validation is tfmicle.train.validation. Map: docs/architecture.md.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import replace

import keras
import tensorflow as tf
import yaml

from tfmicle import build, fileio
from tfmicle.train import runner
from tfmicle.config import Config, ConfigError
from tfmicle.data import records
from tfmicle.data.pipeline import PipelineConfig, read_cases, supervised
from tfmicle.data.tfds_source import TfdsSource
from tfmicle.models.classifier import EXCLUDE, IMAGENET_ENCODER, Classifier
from tfmicle.rundir import (CONFIG_FILE, FINETUNE_JSON, best_checkpoint,
                            read_best, restore_encoder, take_architecture,
                            restore_projection_layers, write_json)
from tfmicle.tasks import MULTICLASS, balanced_class_weights
from tfmicle.train.validation import Validation, validation_batches

log = logging.getLogger(__name__)

MULTICLASS_ONLY_METRICS = ("val_accuracy", "val_top3_accuracy", "val_case_accuracy")


def resolve_auc_classes(spec: str, class_names: list[str]) -> list[str]:
    """finetune.auc_classes ("a,b" or "" for all) -> class names, checked."""
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ConfigError(f"finetune.auc_classes: unknown class {unknown[0]!r} "
                          f"(classes: {', '.join(class_names)})")
    return names or list(class_names)


def count_labeled(data_dir: str, split: str, task: str, case_ids: tuple[str, ...] | None,
                  tfds: TfdsSource | None = None) -> tuple[int, int]:
    """(cases, images) of a split (or of the given cases) that carry a label for task;
    the split of data_dir's records, or of the TFDS dataset tfds."""
    cases, images, _ = labeled_counts(data_dir, split, task, case_ids, 0, tfds)
    return cases, images


def labeled_counts(data_dir: str, split: str, task: str, case_ids: tuple[str, ...] | None,
                   num_classes: int, tfds: TfdsSource | None = None
                   ) -> tuple[int, int, list[int]]:
    """(cases, images, images per class [num_classes]; multiclass only, else []) of a
    split (or of the given cases) that carry a label for task."""
    ds = read_cases(PipelineConfig(data_dir, split, case_ids=case_ids, tfds=tfds),
                    shuffle=False)

    k = num_classes if task == MULTICLASS else 0

    def labeled(c):
        ok = (c["label_class"] >= 0) if task == MULTICLASS else (tf.size(c["label_multi"]) > 0)
        ok = tf.cast(ok, tf.int64)
        n = ok * tf.cast(tf.shape(c["images"])[0], tf.int64)
        per_class = tf.one_hot(tf.maximum(c["label_class"], 0), k, dtype=tf.int64) * n
        return ok, n, per_class
    cases, images, per_class = ds.map(labeled).reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.zeros([k], tf.int64)),
        lambda acc, x: (acc[0] + x[0], acc[1] + x[1], acc[2] + x[2]))
    return int(cases), int(images), [int(v) for v in per_class.numpy()]


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
    if not 0 <= f.proj_layers <= cfg.model.num_proj_layers:
        raise ConfigError(f"finetune.proj_layers must be 0..model.num_proj_layers "
                          f"({cfg.model.num_proj_layers}), got {f.proj_layers}")
    if f.proj_layers and f.init == "imagenet":
        raise ConfigError("finetune.proj_layers needs a pretraining checkpoint's projection "
                          "head (finetune.init: checkpoint), not init: imagenet")
    if task != MULTICLASS and f.best_metric in MULTICLASS_ONLY_METRICS:
        raise ConfigError(f"finetune.best_metric {f.best_metric} needs a multiclass task "
                          f"(this dataset is {task}); use val_auc or val_loss")
    if f.early_stopping_patience < 0:
        raise ConfigError("finetune.early_stopping_patience must be >= 0")
    if f.early_stopping_patience and not cfg.data.eval_split:
        raise ConfigError("finetune.early_stopping_patience needs data.eval_split")
    if f.class_weight != "none" and task != MULTICLASS:
        raise ConfigError(f"finetune.class_weight {f.class_weight} needs a multiclass task "
                          f"(this dataset is {task})")


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
        if f.imagenet_weights and not os.path.isfile(f.imagenet_weights):  # Keras reads local h5
            raise FileNotFoundError(f"finetune.imagenet_weights: {f.imagenet_weights} not found")
    model = build.classifier(cfg, num_classes, task, for_training, weights)
    if initialise and f.init == "checkpoint":
        take_architecture(cfg, f.checkpoint, head=f.proj_layers > 0)  # refuses a conflict
        try:
            prefix = restore_encoder(model.encoder, f.checkpoint)
        except AssertionError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"checkpoint {f.checkpoint} does not match the encoder "
                              f"(model.* settings?): {first[:200]}") from None
        log.info("encoder initialised from %s", prefix)
        if f.proj_layers > 0:
            restore_projection_layers(model.projection, f.checkpoint,
                                      cfg.model.num_proj_layers, cfg.model.proj_out_dim)
            log.info("classifier on projection-head layer %d of %d (from %s)",
                     f.proj_layers, cfg.model.num_proj_layers, prefix)
    elif initialise and imagenet:
        log.info("encoder: keras.applications ResNet50 with ImageNet weights (%s)", weights)
    elif initialise:
        log.info("encoder initialised from scratch")
    return model


# --------------------------------------------------------------------------- training

def finetune(cfg: Config, callbacks: list | None = None, verbose: int = 1) -> dict:
    """Runs (or resumes) a fine-tuning run into cfg.model_dir; returns a summary like
    pretrain(): start_step, end_step, total_steps, history, checkpoint, plus
    best_checkpoint / best (metric, value, step), validation (last metrics) and
    early_stopped."""
    info, base = build.data_source(cfg, (cfg.data.train_split, cfg.data.eval_split))
    tfds = base.tfds
    task = info.get("task", MULTICLASS)
    class_names = list(info.get("class_names", []))
    if not class_names:
        raise ConfigError(f"{tfds.spec} has no label (data.tfds.label_key): nothing to "
                          "fine-tune on" if tfds is not None else
                          f"{cfg.data.dir}/dataset.json has no class_names: nothing to "
                          "fine-tune on")
    if tfds is not None and cfg.data.label_fraction < 1:
        raise ConfigError("data.label_fraction reads data_prep's subsets; with a TFDS source "
                          "slice the split instead, e.g. data.train_split: 'train[:10%]'")
    validate_config(cfg, task)
    auc_classes = resolve_auc_classes(cfg.finetune.auc_classes, class_names)
    auc_indices = [class_names.index(c) for c in auc_classes]

    old = fileio.join(cfg.model_dir, CONFIG_FILE)
    if fileio.isfile(old):
        previous = yaml.safe_load(fileio.read_text(old)) or {}
        if previous.get("mode", "pretrain") != "finetune":
            raise ConfigError(f"{cfg.model_dir} holds a pretraining run; fine-tune into "
                              "a new model dir (finetune.checkpoint points at it)")
    best_state = read_best(cfg.model_dir)
    case_ids = None
    if cfg.data.label_fraction < 1:
        case_ids = tuple(records.read_subset(cfg.data.dir, cfg.data.train_split,
                                             cfg.data.label_fraction))
    # model.* not given: the architecture of the run this one continues (its own folder
    # when resuming, else finetune.checkpoint's), before config.yaml is written
    if runner.latest_checkpoint(cfg.model_dir) is not None:
        take_architecture(cfg, cfg.model_dir, head=cfg.finetune.proj_layers > 0)
    elif cfg.finetune.init == "checkpoint":
        take_architecture(cfg, cfg.finetune.checkpoint, head=cfg.finetune.proj_layers > 0)
    strategy = runner.run_strategy(cfg)
    chief = runner.is_chief(strategy)  # other workers of a multi-worker run write elsewhere
    if chief:
        runner.prepare_model_dir(cfg)
    n_cases, n_images, per_class = labeled_counts(cfg.data.dir, cfg.data.train_split, task,
                                                  case_ids, len(class_names), tfds)
    if n_images == 0:
        raise ConfigError(f"no labeled images in split '{cfg.data.train_split}' of "
                          f"{base.where} (label_fraction {cfg.data.label_fraction})")
    total, warmup = build.schedule_steps(cfg, n_images)
    class_weights = balanced_class_weights(per_class) \
        if cfg.finetune.class_weight == "balanced" else None
    epoch_steps = max(int(math.ceil(n_images / cfg.train.batch_size)), 1)
    every = cfg.finetune.eval_every_steps or epoch_steps  # the validation period
    run_json = {
        "task": task, "class_names": class_names, "num_classes": len(class_names),
        "data_dir": tfds.spec if tfds is not None else fileio.abspath(cfg.data.dir),
        "train_split": cfg.data.train_split,
        "eval_split": cfg.data.eval_split, "label_fraction": cfg.data.label_fraction,
        "train_cases": n_cases, "train_images": n_images, "auc_classes": auc_classes,
        "train_images_per_class": per_class, "class_weights": class_weights,
        "image_size": cfg.data.image_size, "init": cfg.finetune.init,
        "proj_layers": cfg.finetune.proj_layers,
        "encoder": IMAGENET_ENCODER if cfg.finetune.init == "imagenet" else "resnet",
        "checkpoint": cfg.finetune.checkpoint}
    if chief:
        write_json(fileio.join(cfg.model_dir, FINETUNE_JSON), run_json)

    # The buffer never needs more than the labeled images: a larger one would make the
    # first batch wait for many filtered passes over the split (small label fractions).
    pcfg = replace(base, split=cfg.data.train_split,
                   shuffle_buffer=max(min(cfg.data.shuffle_buffer, n_images), 1),
                   case_ids=case_ids)
    if case_ids is not None and not cfg.data.cache:
        log.info("label fraction %g: every pass re-reads the split to filter it; "
                 "data.cache: true keeps the subset in memory", cfg.data.label_fraction)
    resuming = runner.latest_checkpoint(cfg.model_dir) is not None
    # A resumed run continues the data stream where its checkpoint stopped.
    ds = supervised(pcfg, build.augment_config(cfg), task, n_images,
                    runner.checkpoint_step(cfg.model_dir), class_weights)
    keras.utils.set_random_seed(cfg.train.seed)
    with strategy.scope():
        model = build_model(cfg, len(class_names), task, initialise=not resuming)
        opt = build.optimizer(cfg, total, warmup, EXCLUDE)  # + keras.applications' BNs
        model.compile(optimizer=opt, jit_compile=cfg.train.jit_compile)
        opt.build(model.trainable_variables)

    log.info("fine-tuning (%s, %d classes, init %s, fine_tune_after_block %d): %d labeled "
             "images in %d cases (label fraction %g), %d steps of batch %d on %d replica(s), "
             "%d warmup steps, validation every %d steps", task, len(class_names),
             cfg.finetune.init, cfg.finetune.fine_tune_after_block, n_images, n_cases,
             cfg.data.label_fraction, total, cfg.train.batch_size,
             strategy.num_replicas_in_sync, warmup, every)
    if cfg.finetune.best_metric != "val_loss" and not cfg.data.eval_split:
        log.warning("no data.eval_split: finetune.best_metric %s is not used; export takes "
                    "the latest checkpoint", cfg.finetune.best_metric)

    # Multi-worker: every worker validates (they must agree on early stopping); only
    # the chief writes into model_dir.
    with runner.output_dir(strategy, cfg.model_dir) as out_dir:
        cbs = list(callbacks or [])
        validator = None
        if cfg.data.eval_split:
            validator = Validation(validation_batches(cfg, len(class_names), tfds), cfg,
                                   task=task, auc_indices=auc_indices, every=every,
                                   total_steps=total, out_dir=out_dir)
            cbs.insert(0, validator)
        if best_state.get("early_stopped_at") is not None and resuming:
            ckpt, manager = runner.checkpoint_manager(model, cfg.model_dir,
                                                      cfg.train.keep_checkpoints)
            ckpt.restore(manager.latest_checkpoint).expect_partial()
            step = int(model.optimizer.iterations.numpy())
            log.info("this run stopped early at step %d: nothing to train", step)
            result = {"start_step": step, "end_step": step, "history": {}}
        else:
            result = runner.fit_steps(model, ds, cfg, total, callbacks=cbs, verbose=verbose,
                                      out_dir=out_dir)
    state = validator.state if validator is not None else best_state
    result.update({
        "model_dir": cfg.model_dir, "total_steps": total, "task": task,
        "class_names": class_names, "train_images": n_images, "train_cases": n_cases,
        "checkpoint": runner.latest_checkpoint(cfg.model_dir),
        "best_checkpoint": best_checkpoint(cfg.model_dir),
        "best": {k: state.get(k) for k in ("metric", "value", "step")} if state else None,
        "validation": validator.last if validator is not None else None,
        "early_stopped": state.get("early_stopped_at") is not None if state else False,
    })
    result["final_metrics"] = {k: float(v[-1]) for k, v in result["history"].items() if v}
    log.info("fine-tuning done at step %d%s", result["end_step"],
             f"; best {state['metric']}={state['value']:.4f} at step {state['step']}"
             if state.get("value") is not None else "")
    return result


__all__ = ["finetune", "build_model", "count_labeled", "labeled_counts", "resolve_auc_classes",
           "validate_config"]
