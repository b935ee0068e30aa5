"""Contrastive pretraining (SimCLR or MICLe) from a Config: builds the strategy, data,
model and optimizer, then trains through the shared runner."""
from __future__ import annotations

import logging
from dataclasses import replace

import keras

from tfmicle import build
from tfmicle.build import augment_config, data_source, schedule_steps
from tfmicle.config import Config, ConfigError
from tfmicle.tasks import MULTICLASS
from tfmicle.data.pipeline import count_items, pretrain_dataset, pretrain_examples
from tfmicle.rundir import restore_pretraining, take_architecture
from tfmicle.train import runner

log = logging.getLogger(__name__)


def pretrain(cfg: Config, callbacks: list | None = None, verbose: int = 1) -> dict:
    """Runs (or resumes) a pretraining run into cfg.model_dir; returns a summary."""
    info, base = data_source(cfg, (cfg.data.train_split, cfg.data.eval_split))
    if cfg.method == "micle" and base.tfds is not None and not base.tfds.case_key:
        raise ConfigError("method micle on a TFDS source needs data.tfds.case_key (a feature "
                          "naming the case): without it every example is its own case and "
                          "MICLe is SimCLR; use method: simclr")
    num_classes = (len(info.get("class_names", []))
                   if cfg.model.online_probe and info.get("task") == MULTICLASS else 0)
    p = cfg.pretrain
    if p.init == "checkpoint" and not p.checkpoint:
        raise ConfigError("pretrain.init is checkpoint but pretrain.checkpoint is not set "
                          "(a pretraining or imported run folder, or a prefix)")
    resuming = runner.latest_checkpoint(cfg.model_dir) is not None
    # model.* not given: the architecture of the run this one continues (its own folder
    # when resuming, else pretrain.checkpoint's), before config.yaml is written
    if resuming:
        take_architecture(cfg, cfg.model_dir, head=True)
    elif p.init == "checkpoint":
        take_architecture(cfg, p.checkpoint, head=True)
    strategy = runner.run_strategy(cfg)
    if runner.is_chief(strategy):  # other workers of a multi-worker run write nothing here
        runner.prepare_model_dir(cfg)
    per = pretrain_examples(cfg.method, cfg.data.simclr_unit)
    pcfg = replace(base, split=cfg.data.train_split)
    n = count_items(pcfg, per)
    total, warmup = schedule_steps(cfg, n)
    # A resumed run continues the data stream where the checkpoint left it.
    start_step = runner.checkpoint_step(cfg.model_dir)
    ds = pretrain_dataset(cfg.method, pcfg, augment_config(cfg), cfg.data.simclr_unit,
                          start_step)
    val, val_steps = None, None
    if cfg.data.eval_split:
        vcfg = replace(base, split=cfg.data.eval_split, cache=False, seed=cfg.train.seed + 1)
        val = pretrain_dataset(cfg.method, vcfg, augment_config(cfg), cfg.data.simclr_unit)
        val_steps = cfg.train.eval_steps or max(count_items(vcfg, per) // cfg.train.batch_size,
                                                1)
    keras.utils.set_random_seed(cfg.train.seed)
    with strategy.scope():
        model = build.contrastive_model(cfg, num_classes)
        if p.init == "checkpoint" and not resuming:
            # Continued pretraining: weights from the run, a fresh optimizer and step 0
            # (a resumed run restores its own checkpoint in fit_steps instead).
            log.info("encoder and projection head initialised from %s",
                     restore_pretraining(model, p.checkpoint))
        opt = build.optimizer(cfg, total, warmup)
        model.compile(optimizer=opt, jit_compile=cfg.train.jit_compile)
        opt.build(model.trainable_variables)
    log.info("pretraining %s: %d examples (%s), %d steps of batch %d on %d replica(s), "
             "%d warmup steps", cfg.method, n, per + "s", total, cfg.train.batch_size,
             strategy.num_replicas_in_sync, warmup)
    result = runner.fit_steps(model, ds, cfg, total, validation_data=val,
                              validation_steps=val_steps, callbacks=callbacks, verbose=verbose)
    result.update({"model_dir": cfg.model_dir, "total_steps": total,
                   "checkpoint": runner.latest_checkpoint(cfg.model_dir)})
    final = {k: float(v[-1]) for k, v in result["history"].items() if v}
    result["final_metrics"] = final
    log.info("pretraining done at step %d: %s", result["end_step"],
             ", ".join(f"{k}={v:.4f}" for k, v in final.items()))
    return result


__all__ = ["pretrain"]
