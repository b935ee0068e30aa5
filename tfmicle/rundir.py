"""Run folders (a ``model_dir``): what a training run writes, and how the tools that
come after it (fine-tuning from a pretraining run, export, experiments) read it back.
One owner for the file names, so writer and readers cannot drift apart.

Every run (tfmicle.train.runner):
- ``config.yaml``: the resolved config (tfmicle.config.dump_config);
- ``checkpoints/ckpt-<step>``: model + optimizer, numbered by the global step;
- ``logs/``: TensorBoard.
A run imported from a SimCLR TF1 checkpoint (tfmicle.import_checkpoint) has the
config and one model-only checkpoint (encoder, projection head, linear head), numbered
by the source's global step, plus ``import.json`` (source, architecture, variables).
A fine-tuning run (tfmicle.train.finetune) adds:
- ``finetune.json``: task, class names and the data the run was trained on;
- ``validation.jsonl``: one line per validation ({"step", metric: value, ...});
- ``best/ckpt.*`` and ``best/state.json``: the best checkpoint by finetune.best_metric
  and its metrics (what ``tfmicle.export`` exports by default). Runs of earlier
  releases have ``best.json`` beside ``best/``; read_best reads either. No file name
  begins with a sibling folder's name: TensorFlow's ram:// filesystem lists "best.json"
  inside "best/" as a phantom ".json", which broke copying a run folder out.

A model_dir may be a local folder or a URL TensorFlow's filesystems understand (gs://,
ram:// in tests; fileio.check_url): every file here goes through tfmicle.fileio, and checkpoints and
TensorBoard logs through TensorFlow, which takes URLs. Object stores have no atomic
rename, so the JSON files are written in place there (see write_json).

Map of the code: docs/architecture.md.
"""
from __future__ import annotations

import json

import keras
import tensorflow as tf

from tfmicle import build, fileio
from tfmicle.config import Config, ConfigError, dump_config, load_config
from tfmicle.metrics import to_json_safe

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LOGS_DIR = "logs"
FINETUNE_JSON = "finetune.json"
VALIDATION_LOG = "validation.jsonl"
BEST_JSON = "best/state.json"
LEGACY_BEST_JSON = "best.json"   # earlier releases; read, never written
BEST_PREFIX = "best/ckpt"  # relative to the model dir; fileio.join takes it on any path
IMPORT_JSON = "import.json"  # a run folder written by tfmicle.import_checkpoint: its source


# --------------------------------------------------------------------------- files

def write_json(path: str, data: dict) -> None:
    """Writes JSON so a reader never sees half a file: locally through a temporary file
    and an atomic rename; on an object store in one write (an object appears whole
    when its upload ends, and a rename there would be a copy)."""
    text = json.dumps(to_json_safe(data), indent=2)
    fileio.makedirs(fileio.dirname(path))  # best/ exists only once a best checkpoint does
    if not fileio.has_atomic_rename(path):
        fileio.write_text(path, text)
        return
    tmp = path + ".tmp"
    fileio.write_text(tmp, text)
    fileio.replace(tmp, path)


def read_json(path: str) -> dict | None:
    if not fileio.isfile(path):
        return None
    return json.loads(fileio.read_text(path))


def read_best(model_dir: str) -> dict:
    """The best-checkpoint state of a fine-tuning run ({"metric", "value", "step",
    "metrics", ...}; {} when it kept none), from this release's file or an earlier one."""
    return (read_json(fileio.join(model_dir, BEST_JSON))
            or read_json(fileio.join(model_dir, LEGACY_BEST_JSON)) or {})


def prepare_model_dir(cfg: Config) -> str:
    """Creates the model dir and writes the resolved config into it."""
    fileio.makedirs(cfg.model_dir)
    dump_config(cfg, fileio.join(cfg.model_dir, CONFIG_FILE))
    return cfg.model_dir


def run_folder_of(path: str) -> str | None:
    """The run folder (with config.yaml) of a model dir, checkpoints folder or prefix."""
    path = fileio.abspath(path)
    for d in (path, fileio.dirname(path), fileio.dirname(fileio.dirname(path))):
        if fileio.isfile(fileio.join(d, CONFIG_FILE)):
            return d
    return None


def config_of(path: str) -> Config | None:
    """The resolved config of run_folder_of(path); None when none, or it does not load."""
    d = run_folder_of(path)
    try:
        return load_config(fileio.join(d, CONFIG_FILE)) if d else None
    except ConfigError:
        return None


def pretraining_history(checkpoint: str, max_links: int = 4) -> list[dict]:
    """The pretraining an encoder came from, newest first, following pretrain.checkpoint
    (continued pretraining): per run {"path", "readable", "method", "data_dir",
    "train_split", "tfds", "steps", "batch_size", "init", "imported" (import.json)}; a run
    whose config.yaml cannot be read ends it as {"path", "readable": False}."""
    out: list[dict] = []
    while checkpoint and len(out) < max_links:
        d, cfg = run_folder_of(checkpoint), config_of(checkpoint)
        if d is None or cfg is None:
            out.append({"path": fileio.abspath(checkpoint), "readable": False})
            break
        imported = read_json(fileio.join(d, IMPORT_JSON))
        prefix = latest_checkpoint(checkpoint)  # the checkpoint the next run restored
        step = imported["global_step"] if imported else (
            int(prefix.rsplit("-", 1)[1]) if prefix and "ckpt-" in prefix else None)
        out.append({"path": d, "readable": True, "method": cfg.method,
                    "data_dir": cfg.data.dir, "train_split": cfg.data.train_split,
                    "tfds": cfg.data.tfds.name if cfg.data.source == "tfds" else None,
                    "steps": step, "batch_size": cfg.train.batch_size,
                    "init": "import" if imported else cfg.pretrain.init,
                    "imported": imported})
        checkpoint = "" if imported or cfg.pretrain.init != "checkpoint" else cfg.pretrain.checkpoint
    return out


def append_validation(model_dir: str, row: dict) -> None:
    """One line of validation.jsonl. Object stores cannot append: there the file is
    rewritten whole (it holds one short line per validation)."""
    path = fileio.join(model_dir, VALIDATION_LOG)
    line = json.dumps(to_json_safe(row)) + "\n"
    if fileio.is_url(path):
        old = fileio.read_text(path) if fileio.isfile(path) else ""
        fileio.write_text(path, old + line)
        return
    with fileio.open(path, "a") as f:
        f.write(line)


def validation_for_step(model_dir: str, step: int | None) -> dict | None:
    """The validation metrics logged at a step (None when not validated there)."""
    path = fileio.join(model_dir, VALIDATION_LOG)
    if step is None or not fileio.isfile(path):
        return None
    found = None
    for line in fileio.read_text(path).splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("step") == step:
                found = row
    return found


# --------------------------------------------------------------------------- checkpoints

def checkpoint_manager(model: keras.Model, model_dir: str, keep: int
                       ) -> tuple[tf.train.Checkpoint, tf.train.CheckpointManager]:
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return ckpt, tf.train.CheckpointManager(ckpt, fileio.join(model_dir, CHECKPOINT_DIR),
                                            max_to_keep=keep)


def checkpoint_step(model_dir: str) -> int:
    """The step of the newest checkpoint in model_dir (0 when there is none): checkpoints
    are numbered by the optimizer step they were saved at (runner.StepCheckpoint)."""
    prefix = tf.train.latest_checkpoint(fileio.join(model_dir, CHECKPOINT_DIR))
    if not prefix:
        return 0
    return int(prefix.rsplit("-", 1)[1])


def latest_checkpoint(path: str) -> str | None:
    """The newest checkpoint prefix of a model dir, its checkpoints folder, or the prefix
    itself."""
    for d in (fileio.join(path, CHECKPOINT_DIR), path):
        if fileio.isdir(d):
            found = tf.train.latest_checkpoint(d)
            if found:
                return found
    if fileio.exists(path + ".index"):
        return path
    return None


def best_checkpoint(model_dir: str) -> str | None:
    """The best/ckpt prefix of a fine-tuning run, None when it kept none."""
    prefix = fileio.join(model_dir, BEST_PREFIX)
    return prefix if fileio.exists(prefix + ".index") else None


def write_best(model: keras.Model, model_dir: str) -> None:
    """Writes the model's weights as the run's best checkpoint."""
    ckpt = tf.train.Checkpoint(model=model)
    _ = ckpt.save_counter  # created, so the best checkpoint restores like any other
    prefix = fileio.join(model_dir, BEST_PREFIX)
    if fileio.is_process_local(prefix):
        # TF 2.21's RamFileSystem appends to a file it rewrites (a corrupt bundle
        # otherwise); real object stores and local folders replace it.
        for old in fileio.glob(prefix + ".*"):
            fileio.remove(old)
    ckpt.write(prefix)


def restore_encoder(encoder: keras.Model, checkpoint: str) -> str:
    """Loads the encoder weights of a pretraining checkpoint (a model dir, its
    checkpoints folder or a prefix) into `encoder`; heads and optimizer are ignored.
    Returns the checkpoint prefix used."""
    prefix = latest_checkpoint(checkpoint)
    if prefix is None:
        raise FileNotFoundError(f"no checkpoint found at {checkpoint}")
    # Match the saved object graph root -> model -> encoder by attribute names.
    tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=encoder)).restore(
        prefix).expect_partial().assert_existing_objects_matched()
    return prefix


ARCHITECTURE_KEYS = ("depth", "width_multiplier", "sk_ratio")
HEAD_KEYS = ("num_proj_layers", "proj_out_dim")


def inherit_architecture(cfg: Config, pre: Config, checkpoint: str, head: bool = False) -> None:
    """Takes the encoder's architecture (and, with head, its projection head's) from the
    run `pre` that wrote `checkpoint` into cfg, for every model.* key the user did not
    give (config.given_keys); a given value that differs is a ConfigError naming both.
    So an imported SimCLRv2 run (r50_1x_sk1, ...) needs no model.* overrides."""
    from tfmicle.config import given_keys
    given = given_keys(cfg)
    for key in ARCHITECTURE_KEYS + (HEAD_KEYS if head else ()):
        mine, theirs = getattr(cfg.model, key), getattr(pre.model, key)
        if mine == theirs:
            continue
        if f"model.{key}" in given:
            raise ConfigError(f"model.{key} is {mine} but the checkpoint {checkpoint} was "
                              f"trained with {theirs} (leave model.{key} unset to take it)")
        setattr(cfg.model, key, theirs)
    from tfmicle.models.resnet import small_stem
    small = small_stem(cfg.data.image_size)
    if small != small_stem(pre.data.image_size):
        raise ConfigError(f"data.image_size {cfg.data.image_size} needs a "
                          f"{'3x3' if small else '7x7'} stem but the checkpoint was "
                          f"trained at {pre.data.image_size} px (other stem)")


def take_architecture(cfg: Config, checkpoint: str, head: bool = False) -> None:
    """inherit_architecture from the run a checkpoint (a run folder, its checkpoints
    folder or a prefix) belongs to, when its config.yaml is there (a bare TF checkpoint
    has none: then cfg's model.* must match, and the restore checks it)."""
    pre = config_of(checkpoint)
    if pre is not None:
        inherit_architecture(cfg, pre, checkpoint, head)


def restore_pretraining(model: keras.Model, checkpoint: str) -> str:
    """Continued pretraining: loads encoder and projection head of a pretraining (or
    imported) run's checkpoint into a ContrastiveModel; its probe, optimizer and step
    are not read. ConfigError (one line) when the run's architecture differs or a
    variable is missing or of another shape. Returns the checkpoint prefix used."""
    prefix = latest_checkpoint(checkpoint)
    if prefix is None:
        raise FileNotFoundError(f"pretrain.checkpoint: no checkpoint found at {checkpoint}")
    try:  # a shape mismatch raises in restore() itself, a missing variable in the assert
        tf.train.Checkpoint(model=tf.train.Checkpoint(
            encoder=model.encoder, projection=model.projection)).restore(
            prefix).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"pretrain.checkpoint {checkpoint} does not match the model "
                          f"(model.* settings?): {first[:200]}") from None
    return prefix


def restore_projection_layers(layers: keras.Model, checkpoint: str, num_layers: int,
                              out_dim: int) -> str:
    """Fine-tuning from a projection-head layer: fills `layers` (the first k layers of a
    head, heads.projection_head(keep=k)) from the projection head of a pretraining run
    (num_layers / out_dim: that head's). ConfigError (one line) on a mismatch. Returns
    the checkpoint prefix used."""
    from tfmicle.models.heads import projection_head
    prefix = latest_checkpoint(checkpoint)
    if prefix is None:
        raise FileNotFoundError(f"no checkpoint found at {checkpoint}")
    full = projection_head(int(layers.inputs[0].shape[-1]), num_layers, out_dim)
    try:
        tf.train.Checkpoint(model=tf.train.Checkpoint(projection=full)).restore(
            prefix).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"the projection head of {checkpoint} does not match "
                          f"(model.num_proj_layers / proj_out_dim?): {first[:200]}") from None
    for layer in layers.layers:  # same names, same shapes: the head's first layers
        for mine, theirs in zip(layer.weights, full.get_layer(layer.name).weights):
            mine.assign(theirs)
    return prefix


def load_encoder(cfg: Config, checkpoint: str | None, seed: int = 0) -> keras.Model:
    """The ResNet encoder of a pretraining config (per-replica BN, for inference): with
    its weights from `checkpoint` (see restore_encoder), or randomly initialised with
    `seed` when checkpoint is None (the random-init baseline of the same architecture)."""
    from tfmicle.models.resnet import build_resnet
    keras.utils.set_random_seed(seed)
    encoder = build_resnet(build.resnet_spec(cfg, global_bn=False))
    if checkpoint is not None:
        restore_encoder(encoder, checkpoint)
    return encoder


def load_pretraining_model(model_dir: str) -> tuple[keras.Model, Config]:
    """A pretraining or imported run's whole model, for inference: (ContrastiveModel,
    its config). Encoder and projection head, and the run's supervised head when it has
    one (`model.probe`: an imported SimCLRv2 run's ImageNet linear head, or a pretraining
    run's online probe; None otherwise), from the latest checkpoint with every variable
    matched; batch norm per replica. supervised_logits(model, images) runs the head."""
    cfg_path = fileio.join(model_dir, CONFIG_FILE)
    if not fileio.isfile(cfg_path):
        raise FileNotFoundError(f"{model_dir} is not a training run (no {CONFIG_FILE})")
    cfg = load_config(cfg_path)
    prefix = latest_checkpoint(model_dir)
    if prefix is None:
        raise FileNotFoundError(f"no checkpoint found in {model_dir}")
    # the head's width from the checkpoint itself: import.json's linear_head_classes
    # for an import, the dataset's classes for an online probe
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    heads = [s for k, s in shapes.items() if k.startswith("model/probe/") and len(s) == 2]
    cfg.model.global_bn = False
    model = build.contrastive_model(cfg, int(heads[0][1]) if heads else 0)
    model.build_all(cfg.data.image_size)
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial() \
        .assert_existing_objects_matched()
    return model, cfg


def supervised_logits(model: keras.Model, images) -> tf.Tensor:
    """Images [B, H, W, 3] in [0, 1] -> the run's supervised head's logits [B, classes]
    (an imported SimCLRv2 run: ImageNet's 1000); ValueError when the run has none."""
    if model.probe is None:
        raise ValueError("this run has no supervised head (model.probe)")
    return model.probe(model.encoder(images, training=False))


# --------------------------------------------------------------------------- fine-tuning runs

def run_info(model_dir: str) -> tuple[Config, dict]:
    """(resolved config, finetune.json) of a fine-tuning run; FileNotFoundError /
    ConfigError when model_dir is not one."""
    cfg_path = fileio.join(model_dir, CONFIG_FILE)
    info_path = fileio.join(model_dir, FINETUNE_JSON)
    if not fileio.isfile(cfg_path):
        raise FileNotFoundError(f"{model_dir} is not a training run (no {CONFIG_FILE})")
    cfg = load_config(cfg_path)
    if cfg.mode != "finetune" or not fileio.isfile(info_path):
        raise ConfigError(f"{model_dir} is not a fine-tuning run (mode: {cfg.mode}); "
                          "export a model fine-tuned with mode: finetune")
    return cfg, read_json(info_path)


def resolve_checkpoint(model_dir: str, which: str = "auto") -> tuple[str, str]:
    """("best" | "latest" | "path", prefix) for which = auto (best if kept, else latest),
    best, latest, or a checkpoint prefix / folder."""
    best = best_checkpoint(model_dir)
    if which in ("auto", "best"):
        if best is not None:
            return "best", best
        if which == "best":
            raise FileNotFoundError(f"{model_dir} has no best checkpoint (no eval split?); "
                                    "use --checkpoint latest")
    if which in ("auto", "latest"):
        prefix = latest_checkpoint(model_dir)
        if prefix is None:
            raise FileNotFoundError(f"{model_dir} has no checkpoint yet")
        return "latest", prefix
    prefix = latest_checkpoint(which)
    if prefix is None:
        raise FileNotFoundError(f"no checkpoint at {which}")
    return "path", prefix


def load_classifier(model_dir: str, checkpoint: str = "auto"):
    """Rebuilds a fine-tuned Classifier (inference: no freezing, plain BN) and restores
    its weights. Returns (model, config, finetune.json, checkpoint prefix)."""
    cfg, info = run_info(model_dir)
    _, prefix = resolve_checkpoint(model_dir, checkpoint)
    model = build.classifier(cfg, info["num_classes"], info["task"], for_training=False)
    status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ConfigError(f"checkpoint {prefix} does not match the run's model: "
                          f"{str(e).splitlines()[0][:200]}") from None
    return model, cfg, info, prefix


__all__ = ["CONFIG_FILE", "CHECKPOINT_DIR", "LOGS_DIR", "FINETUNE_JSON", "VALIDATION_LOG",
           "BEST_JSON", "BEST_PREFIX", "write_json", "read_json", "read_best", "prepare_model_dir",
           "config_of", "append_validation", "validation_for_step", "checkpoint_manager",
           "latest_checkpoint", "best_checkpoint", "write_best", "restore_encoder",
           "inherit_architecture", "take_architecture", "load_pretraining_model", "supervised_logits", "restore_pretraining", "restore_projection_layers", "IMPORT_JSON",
           "run_info", "resolve_checkpoint", "load_classifier"]
