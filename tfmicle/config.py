"""Typed experiment configs: dataclasses loaded from YAML plus ``--set a.b=c`` overrides.

Unknown keys and values of the wrong type are errors (ConfigError, one readable line),
so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field

import yaml

from tfmicle import fileio
from tfmicle.cli import UsageError


class ConfigError(UsageError, ValueError):
    """A config file or override is wrong (user-facing, one line)."""


@dataclass
class TfdsConfig:
    name: str = ""                 # TFDS dataset, e.g. imagenet2012 (optionally name:version)
    config: str = ""               # builder config; "" = the dataset's default
    image_key: str = "image"       # the Image feature
    label_key: str = "label"       # a ClassLabel feature; "" = unlabeled
    case_key: str = ""             # feature naming the case (MICLe); "" = each example a case
    data_dir: str = ""             # TFDS data dir; "" = TFDS's default (~/tensorflow_datasets)
    manual_dir: str = ""           # manually downloaded archives (imagenet2012's tars)
    prepare: bool = False          # true: download_and_prepare on first use


@dataclass
class DataConfig:
    source: str = "records"        # records (data.dir, from data_prep) | tfds (data.tfds.*)
    dir: str = ""                  # data_prep output folder
    train_split: str = "train"
    eval_split: str = ""           # "" = no evaluation during training
    image_size: int = 224
    augment: str = "simclr"        # simclr | cxr | finetune | none | derm
    color_strength: float = -1.0   # < 0 = the preset's strength
    crop_min_area: float = -1.0    # < 0 = the preset's
    blur: bool = True              # False switches blur off
    rotation_degrees: float = -1.0  # < 0 = the preset's
    shuffle_buffer: int = 10_000
    cache: bool = False
    label_fraction: float = 1.0    # fine-tuning: nested subset written by data_prep
    crop: bool = True              # False: no random crop (centre crop + resize instead)
    flip: bool = True              # False switches the random horizontal flip off
    color_p: float = -1.0          # colour-jitter probability; < 0 = the preset's
    blur_p: float = -1.0           # blur probability; < 0 = the preset's (blur: false wins)
    grayscale_p: float = -1.0      # random-grayscale probability; < 0 = the preset's
    simclr_unit: str = "case"      # SimCLR example: case (one image per case per epoch, no
                                   # same-case negatives) | image (plain image-level SimCLR)
    tfds: TfdsConfig = field(default_factory=TfdsConfig)  # with source: tfds; splits are
                                   # train_split / eval_split (TFDS slicing works: train[:10%])


@dataclass
class ModelConfig:
    depth: int = 50
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    num_proj_layers: int = 3
    proj_out_dim: int = 128
    global_bn: bool = True         # synchronized batch norm across replicas
    bn_momentum: float = 0.9
    online_probe: bool = True      # linear probe on stop-gradient features when labeled


@dataclass
class TrainConfig:
    batch_size: int = 256          # global batch
    train_steps: int = 0           # 0 = train_epochs * examples / batch_size
    train_epochs: float = 100.0
    warmup_epochs: float = 10.0
    optimizer: str = "lars"        # lars | momentum | sgd | adam
    learning_rate: float = 0.3     # base LR, scaled by lr_scaling
    lr_scaling: str = "linear"     # linear (batch / 256) | sqrt | none
    momentum: float = 0.9
    weight_decay: float = 1e-6
    temperature: float = 0.1
    checkpoint_steps: int = 1000
    keep_checkpoints: int = 3
    log_steps: int = 100           # steps per Keras "epoch" (progress bar, TensorBoard)
    eval_steps: int = 0            # 0 = whole eval split
    precision: str = "float32"     # float32 | mixed_bfloat16 | auto (bf16 where it is fast)
    jit_compile: bool = False      # XLA; slower on CPU and fails under MirroredStrategy
    seed: int = 0


@dataclass
class PretrainConfig:
    init: str = "scratch"          # scratch | checkpoint (continued pretraining, e.g. from
                                   # an imported SimCLRv2 run: python -m tfmicle.import_checkpoint)
    checkpoint: str = ""           # init: checkpoint: a pretraining run folder or a prefix;
                                   # its encoder + projection head load, the optimizer and
                                   # step start fresh


@dataclass
class FinetuneConfig:
    init: str = "checkpoint"       # checkpoint | imagenet | scratch
    checkpoint: str = ""           # pretraining model dir (or checkpoint prefix)
    imagenet_weights: str = ""     # local keras.applications weights file; "" = download
    fine_tune_after_block: int = -1  # -1 all, 4 linear eval, k freezes stem..block k
    uncertainty_policy: str = "ignore"  # ones | zeros | ignore (multilabel -1 targets)
    best_metric: str = "val_loss"
    early_stopping_patience: int = 0
    auc_classes: str = ""          # comma-separated class names for val_auc; "" = all
    eval_every_steps: int = 0      # validation period; 0 = one epoch of the labeled subset
    zero_init_head: bool = False   # SimCLR's zero_init_logits_layer (default False there too)
    class_weight: str = "none"     # none | balanced (multiclass: loss weight n / (K n_k));
                                   # choose it on validation for imbalanced labels
    proj_layers: int = 0           # SimCLRv2's ft_proj_selector: the classifier reads the
                                   # output of the first k layers of the pretrained projection
                                   # head (loaded, fine-tuned); 0 = encoder features.
                                   # SimCLRv2 recommends 1 (the middle of 3)


@dataclass
class DistributeConfig:
    strategy: str = "default"      # default | one_device | mirrored | multiworker | tpu | auto
    tpu: str = ""
    num_cpu_devices: int = 0       # mirrored on CPU: logical CPU devices (replicas)


@dataclass
class Config:
    mode: str = "pretrain"         # pretrain | finetune
    method: str = "simclr"         # simclr | micle (pretrain)
    model_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)


CHOICES = {
    "mode": ("pretrain", "finetune"),
    "method": ("simclr", "micle"),
    "data.source": ("records", "tfds"),
    "data.augment": ("simclr", "cxr", "finetune", "none", "derm"),
    "data.simclr_unit": ("case", "image"),
    "train.optimizer": ("lars", "momentum", "sgd", "adam"),
    "train.lr_scaling": ("linear", "sqrt", "none"),
    "train.precision": ("float32", "mixed_bfloat16", "auto"),
    "pretrain.init": ("scratch", "checkpoint"),
    "finetune.init": ("checkpoint", "imagenet", "scratch"),
    "finetune.uncertainty_policy": ("ones", "zeros", "ignore"),
    "finetune.class_weight": ("none", "balanced"),
    "finetune.best_metric": ("val_loss", "val_accuracy", "val_top3_accuracy", "val_auc",
                             "val_pr_auc", "val_case_accuracy", "val_case_auc"),
    "distribute.strategy": ("default", "one_device", "mirrored", "multiworker", "tpu", "auto"),
}


def _coerce(value, typ, key: str):
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        return "" if value is None else str(value)
    return value


def _apply(obj, data: dict, prefix: str = "", given: set | None = None) -> None:
    """Sets data's values on the dataclass obj (strictly: known keys, coerced types,
    CHOICES); adds each dotted key set to `given`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            _apply(getattr(obj, key), value, full + ".", given)
        else:
            value = _coerce(value, typ, full)
            if full in CHOICES and value not in CHOICES[full]:
                raise ConfigError(f"{full}: {value!r} is not one of {', '.join(CHOICES[full])}")
            setattr(obj, key, value)
            if given is not None:
                given.add(full)


def parse_overrides(items: list[str]) -> dict:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"} (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None,
                extra: dict | None = None) -> Config:
    """Config from a YAML file (optional), then `extra` (a nested dict), then --set items.
    The keys they set are recorded (given_keys): a run may take the others from the
    checkpoint it starts from (rundir.inherit_architecture)."""
    cfg = Config()
    given: set[str] = set()
    if path:
        if not fileio.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:   # a run folder's config.yaml may be on an object store (gs://, ram://)
            data = yaml.safe_load(fileio.read_text(path)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
        _apply(cfg, data, given=given)
    if extra:
        _apply(cfg, extra, given=given)
    _apply(cfg, parse_overrides(overrides or []), given=given)
    cfg._given = frozenset(given)   # not a field: never dumped, hashed or compared
    return cfg


def given_keys(cfg: Config) -> frozenset[str]:
    """The dotted keys a config file, `extra` or --set gave load_config for cfg (empty
    for a Config made otherwise)."""
    return getattr(cfg, "_given", frozenset())


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    cfg = Config()
    _apply(cfg, data)
    return cfg


def dump_config(cfg: Config, path: str) -> None:
    """Writes the resolved config as YAML (path: local or a URL, tfmicle.fileio)."""
    fileio.write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_hash(cfg: Config) -> str:
    """sha256 (first 16 hex) of the resolved config (model_dir excluded)."""
    d = to_dict(cfg)
    d.pop("model_dir", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
