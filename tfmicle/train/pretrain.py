"""Contrastive pretraining (SimCLR or MICLe) from a Config: builds the strategy, data,
model and optimizer, then trains through the shared runner."""
from __future__ import annotations

import logging
from dataclasses import replace

import keras

from tfmicle.build import augment_config, data_source, resnet_spec, schedule_steps
from tfmicle.config import Config, ConfigError
from tfmicle.tasks import MULTICLASS
from tfmicle.data.pipeline import count_items, pretrain_dataset, pretrain_examples
from tfmicle.models.contrastive import ContrastiveModel
from tfmicle.models.heads import projection_head
from tfmicle.models.resnet import build_resnet
from tfmicle.optim import WarmupCosine, make_optimizer
from tfmicle.train import runner

log = logging.getLogger(__name__)


def build_contrastive_model(cfg: Config, num_classes: int) -> ContrastiveModel:
    """Encoder + projection head (+ probe) with every variable created. Call inside the
    strategy scope."""
    encoder = build_resnet(resnet_spec(cfg))
    proj = projection_head(encoder.output_shape[-1], cfg.model.num_proj_layers,
                           cfg.model.proj_out_dim, cfg.model.bn_momentum, cfg.model.global_bn,
                           dtype=cfg.train.precision)
    model = ContrastiveModel(encoder, proj, num_classes=num_classes,
                             temperature=cfg.train.temperature,
                             weight_decay=cfg.train.weight_decay, name="contrastive")
    model.build_all(cfg.data.image_size)
    return model


def pretrain(cfg: Config, callbacks: list | None = None, verbose: int = 1) -> dict:
    """Runs (or resumes) a pretraining run into cfg.model_dir; returns a summary."""
    info, base = data_source(cfg, (cfg.data.train_split, cfg.data.eval_split))
    if cfg.method == "micle" and base.tfds is not None and not base.tfds.case_key:
        raise ConfigError("method micle on a TFDS source needs data.tfds.case_key (a feature "
                          "naming the case): without it every example is its own case and "
                          "MICLe is SimCLR; use method: simclr")
    num_classes = (len(info.get("class_names", []))
                   if cfg.model.online_probe and info.get("task") == MULTICLASS else 0)
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
        model = build_contrastive_model(cfg, num_classes)
        lr = WarmupCosine(cfg.train.learning_rate, cfg.train.batch_size, total, warmup,
                          cfg.train.lr_scaling)
        opt = make_optimizer(cfg.train.optimizer, lr, cfg.train.momentum,
                             cfg.train.weight_decay)
        model.compile(optimizer=opt, jit_compile=cfg.train.jit_compile)
        opt.build(model.trainable_variables)
    log.info("pretraining %s: %d examples (%s), %d steps of batch %d on %d replica(s), "
             "%d warmup steps", cfg.method, n, per + "s", total, cfg.train.batch_size,
             strategy.num_replicas_in_sync, warmup)
    result = runner.fit_steps(model, ds, total, cfg.model_dir, cfg.train.checkpoint_steps,
                              cfg.train.log_steps, cfg.train.keep_checkpoints, val, val_steps,
                              callbacks, verbose)
    result.update({"model_dir": cfg.model_dir, "total_steps": total,
                   "checkpoint": runner.latest_checkpoint(cfg.model_dir)})
    final = {k: float(v[-1]) for k, v in result["history"].items() if v}
    result["final_metrics"] = final
    log.info("pretraining done at step %d: %s", result["end_step"],
             ", ".join(f"{k}={v:.4f}" for k, v in final.items()))
    return result


__all__ = ["pretrain", "build_contrastive_model"]
