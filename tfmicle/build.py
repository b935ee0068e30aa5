"""Configs to objects: what a run's Config means as an augmentation, an encoder spec,
a step schedule, an optimizer and a fine-tuning classifier. Both trainers and the
run-folder reader (tfmicle.rundir) build through here, so a config means the same
thing wherever it is read. Map: docs/architecture.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import keras

from tfmicle.config import Config, ConfigError
from tfmicle.data import records, tfds_source
from tfmicle.data.augment import AugmentConfig, preset
from tfmicle.data.pipeline import PipelineConfig
from tfmicle.models.classifier import Classifier, build_classifier
from tfmicle.models.contrastive import ContrastiveModel
from tfmicle.models.heads import projection_head
from tfmicle.models.resnet import ResNetSpec, build_resnet
from tfmicle.optim import EXCLUDE_DEFAULT, WarmupCosine, make_optimizer


def precision(cfg: Config) -> str:
    """The Keras dtype policy of the models: train.precision, with `auto` resolved for
    the current strategy (a run resolves it when it starts: train.runner.run_strategy)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    import tensorflow as tf

    from tfmicle.distribute import auto_precision
    return auto_precision(tf.distribute.get_strategy())


def augment_config(cfg: Config) -> AugmentConfig:
    d = cfg.data
    return preset(d.augment,
                  color_strength=d.color_strength if d.color_strength >= 0 else None,
                  crop_min_area=d.crop_min_area if d.crop_min_area >= 0 else None,
                  rotation_degrees=d.rotation_degrees if d.rotation_degrees >= 0 else None,
                  blur_p=(d.blur_p if d.blur_p >= 0 else None) if d.blur else 0.0,
                  color_p=d.color_p if d.color_p >= 0 else None,
                  grayscale_p=d.grayscale_p if d.grayscale_p >= 0 else None,
                  crop=None if d.crop else False, flip=None if d.flip else False)


def data_source(cfg: Config, splits: Sequence[str] = ()) -> tuple[dict, PipelineConfig]:
    """The data a config reads: (info, base pipeline config). info is dataset.json's
    task and class_names (records) or the TFDS dataset's; the base PipelineConfig names
    the source (records folder or TFDS dataset) with cfg.train's batch and seed and
    cfg.data's image size, shuffle buffer and cache; replace() its split and the rest.
    Raises FileNotFoundError / ConfigError (one line) for a missing source or split."""
    d = cfg.data
    base = dict(batch_size=cfg.train.batch_size, image_size=d.image_size,
                shuffle_buffer=d.shuffle_buffer, cache=d.cache, seed=cfg.train.seed)
    if d.source == "tfds":
        src = tfds_source.from_config(d.tfds)
        for split in splits:
            if split:
                tfds_source.check_split(src, split)
        return tfds_source.dataset_info(src), PipelineConfig("", d.train_split, tfds=src,
                                                             **base)
    if not d.dir:
        raise FileNotFoundError("data.dir is not set (a data_prep output folder), or use "
                                "data.source: tfds")
    info = records.load_dataset_info(d.dir)
    known = info.get("splits", {})
    for split in splits:
        if split and split not in known:
            raise FileNotFoundError(f"split '{split}' not in {d.dir} "
                                    f"(has: {', '.join(known)})")
    return info, PipelineConfig(d.dir, d.train_split, **base)


def resnet_spec(cfg: Config, global_bn: bool | None = None) -> ResNetSpec:
    m = cfg.model
    return ResNetSpec(depth=m.depth, width_multiplier=m.width_multiplier, sk_ratio=m.sk_ratio,
                      image_size=cfg.data.image_size, bn_momentum=m.bn_momentum,
                      global_bn=m.global_bn if global_bn is None else global_bn,
                      dtype=precision(cfg))


def schedule_steps(cfg: Config, num_examples: int) -> tuple[int, int]:
    """(total_steps, warmup_steps) from train_steps or epochs over num_examples."""
    t = cfg.train
    per_epoch = num_examples / t.batch_size
    total = t.train_steps or max(int(math.ceil(t.train_epochs * per_epoch)), 1)
    warmup = int(round(t.warmup_epochs * per_epoch))
    return total, min(warmup, total)


# train.optimizer values whose optimizer applies train.weight_decay itself (LARS couples
# it into each update, minus its exclusions); for the others the models add an L2 term.
SELF_DECAYING_OPTIMIZERS = ("lars",)


def optimizer(cfg: Config, total_steps: int, warmup_steps: int,
              exclude: Sequence[str] = EXCLUDE_DEFAULT) -> keras.optimizers.Optimizer:
    """train.optimizer over the warmup + cosine schedule of train.learning_rate, for both
    trainers. exclude: variable-path patterns LARS keeps out of weight decay and trust
    ratio. The models built here agree with it on weight decay (optimizer_decays)."""
    t = cfg.train
    lr = WarmupCosine(t.learning_rate, t.batch_size, total_steps, warmup_steps, t.lr_scaling)
    return make_optimizer(t.optimizer, lr, t.momentum, t.weight_decay, exclude)


def optimizer_decays(cfg: Config) -> bool:
    """Whether the optimizer of cfg (optimizer()) applies train.weight_decay itself: then
    the pretraining model adds no L2 term and the classifier one on its head only (SimCLR's
    add_weight_decay); otherwise both add an L2 term over the non-excluded weights."""
    return cfg.train.optimizer in SELF_DECAYING_OPTIMIZERS


def contrastive_model(cfg: Config, num_classes: int, encoder: keras.Model | None = None
                      ) -> ContrastiveModel:
    """The pretraining model of a config: encoder (built from the config unless given) +
    projection head (+ a linear probe of num_classes > 0), every variable created. Call
    inside the strategy scope."""
    encoder = encoder if encoder is not None else build_resnet(resnet_spec(cfg))
    proj = projection_head(encoder.output_shape[-1], cfg.model.num_proj_layers,
                           cfg.model.proj_out_dim, cfg.model.bn_momentum, cfg.model.global_bn,
                           dtype=precision(cfg))
    model = ContrastiveModel(encoder, proj, num_classes=num_classes,
                             temperature=cfg.train.temperature,
                             weight_decay=cfg.train.weight_decay,
                             optimizer_decays=optimizer_decays(cfg), name="contrastive")
    model.build_all(cfg.data.image_size)
    return model


def classifier(cfg: Config, num_classes: int, task: str, for_training: bool = True,
               imagenet_weights: str | None = None) -> Classifier:
    """The fine-tuning Classifier of a config, every variable created. for_training:
    freeze by finetune.fine_tune_after_block, synchronized BN as configured and a zero
    head (finetune.zero_init_head); otherwise plain BN, nothing frozen (inference).
    finetune.proj_layers > 0 puts the first layers of a projection head (model.*'s)
    between encoder and head.
    imagenet_weights: with finetune.init imagenet, the weights to load (None: random).
    Call inside the strategy scope."""
    f = cfg.finetune
    imagenet = f.init == "imagenet"
    spec = resnet_spec(cfg, global_bn=None if for_training else False)
    m = cfg.model

    def first_layers(width: int) -> keras.Model:  # of the pretraining run's projection head
        return projection_head(width, m.num_proj_layers, m.proj_out_dim, m.bn_momentum,
                               spec.global_bn, dtype=precision(cfg), keep=f.proj_layers)
    projection = first_layers if f.proj_layers > 0 else None
    try:
        return build_classifier(
            spec, num_classes, task, f.uncertainty_policy, cfg.train.weight_decay,
            fine_tune_after_block=f.fine_tune_after_block if for_training else -1,
            imagenet_weights=imagenet_weights, use_imagenet_encoder=imagenet,
            zero_init_head=f.zero_init_head and for_training, projection=projection,
            optimizer_decays=optimizer_decays(cfg))
    except (ValueError, OSError) as e:
        if imagenet and imagenet_weights:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot load ImageNet weights from {imagenet_weights}: "
                              f"{first}") from None
        raise


__all__ = ["data_source", "augment_config", "resnet_spec", "schedule_steps", "optimizer",
           "optimizer_decays", "SELF_DECAYING_OPTIMIZERS", "contrastive_model", "classifier"]
