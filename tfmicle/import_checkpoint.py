"""`python -m tfmicle.import_checkpoint`: a SimCLR TF1 checkpoint (the official
SimCLRv2 release, ``model.ckpt-NNNN.{index,data-*}``) -> a tfmicle run folder that
continued pretraining (``pretrain.init: checkpoint``) and fine-tuning
(``finetune.checkpoint``) start from.

    python -m tfmicle.import_checkpoint --simclr-tf1 r50_1x_sk1/model.ckpt-250228 \\
        --out runs/simclrv2_r50_1x_sk1 [--depth 50 --width 1 --sk 1] [--ema]

Depth, width and SK are read off the variable list unless given. Every model variable
of the checkpoint must map onto exactly one variable of the tfmicle model (encoder,
projection head, 1000-class linear head) with its shape, and every tfmicle variable
must be filled; otherwise the import stops (exit 2) naming what is missing or left
over. LARS ``/Momentum`` slots and ``global_step`` are skipped. The run folder holds
config.yaml, a model-only checkpoint numbered by the source's step, and import.json.
Map of the code: docs/architecture.md.
"""
from __future__ import annotations

import logging

from tfmicle import cli, fileio

log = logging.getLogger("tfmicle.import_checkpoint")
SMALL_IMAGE_SIZE = 32  # SimCLR's CIFAR stem (cifar_stem=image_size <= 32)


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m tfmicle.import_checkpoint",
        description="Import a SimCLR(v2) TF1 checkpoint as a tfmicle run folder.")
    p.add_argument("--simclr-tf1", required=True, metavar="PREFIX",
                   help="checkpoint prefix (PATH/model.ckpt-250228) or its folder")
    p.add_argument("--out", required=True,
                   help="run folder to write, local or a URL (gs://...); must not hold a run")
    p.add_argument("--depth", type=int, help="ResNet depth (default: from the variables)")
    p.add_argument("--width", type=float, help="width multiplier (default: from the variables)")
    p.add_argument("--sk", type=int, choices=(0, 1),
                   help="selective kernels (1: sk_ratio 0.0625; default: from the variables)")
    p.add_argument("--ema", action="store_true",
                   help="import the ema_model/ (moving-average) copies instead of the raw weights")
    return cli.add_output_flags(p, quiet=False)


def resolve_prefix(path: str) -> str:
    """A checkpoint prefix from a prefix or a folder holding one (its 'checkpoint' file)."""
    import tensorflow as tf
    if fileio.isdir(path):
        found = tf.train.latest_checkpoint(path)
        if found and tf.io.gfile.exists(found + ".index"):
            return found
        # A downloaded folder's 'checkpoint' file may name where it was trained (gs://...).
        indexes = fileio.glob(fileio.join(path, "*.index"))
        if len(indexes) == 1:
            return indexes[0][: -len(".index")]
        raise FileNotFoundError(f"{'several checkpoints' if indexes else 'no checkpoint'} in "
                                f"{path} (pass PATH/model.ckpt-NNNN)")
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"no checkpoint at {path} (expected {path}.index)")
    return path


def import_simclr_tf1(source: str, out: str, depth: int | None = None,
                      width: float | None = None, sk: int | None = None,
                      ema: bool = False) -> dict:
    """Imports the checkpoint at `source` into the run folder `out`; returns import.json's
    content. CheckpointMismatch / ConfigError when it does not correspond."""
    import tensorflow as tf

    from tfmicle import build, rundir
    from tfmicle.config import Config, ConfigError
    from tfmicle.models import simclr_tf1 as tf1
    from tfmicle.models.resnet import build_resnet_in_order

    prefix = resolve_prefix(source)
    if rundir.latest_checkpoint(out) is not None or fileio.isfile(
            fileio.join(out, rundir.CONFIG_FILE)):
        raise ConfigError(f"{out} already holds a run; import into a new folder")
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    variables = tf1.model_variables(shapes, ema)
    if not variables:
        raise tf1.CheckpointMismatch(
            f"{prefix} has no {'ema_model/ ' if ema else ''}model variables"
            + ("" if ema else " (only ema_model/ copies? pass --ema)"))
    arch = tf1.infer_architecture(variables)
    if depth is not None:
        arch.depth = depth
    if width is not None:
        arch.width_multiplier = int(width) if width == int(width) else width
    if sk is not None:
        arch.sk_ratio = tf1.SK_RATIO if sk else 0.0

    cfg = Config(mode="pretrain", model_dir=out)
    cfg.model.depth, cfg.model.width_multiplier = arch.depth, float(arch.width_multiplier)
    cfg.model.sk_ratio = arch.sk_ratio
    cfg.model.num_proj_layers, cfg.model.proj_out_dim = arch.num_proj_layers, arch.proj_out_dim
    cfg.data.image_size = SMALL_IMAGE_SIZE if arch.small_stem else cfg.data.image_size
    try:
        encoder, convs, bns = build_resnet_in_order(build.resnet_spec(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model = build.contrastive_model(cfg, arch.num_classes, encoder=encoder)
    mapping = tf1.variable_map(model.encoder, convs, bns, model.projection,
                               arch.num_proj_layers, model.probe)
    tf1.check_coverage(mapping, variables)
    tf1.assign(mapping, reader.get_tensor, ema)

    step = int(reader.get_tensor("global_step")) if "global_step" in shapes else 0
    rundir.prepare_model_dir(cfg)
    ckpt = tf.train.Checkpoint(model=model)
    saved = tf.train.CheckpointManager(ckpt, fileio.join(out, rundir.CHECKPOINT_DIR),
                                       max_to_keep=1).save(checkpoint_number=step)
    skipped = sorted(set(shapes) - {(tf1.EMA_SCOPE if ema else "") + n for n in variables})
    info = {"source": fileio.abspath(prefix), "format": "simclr_tf1", "ema": ema,
            "global_step": step, "checkpoint": saved,
            "architecture": {"depth": arch.depth, "width_multiplier": arch.width_multiplier,
                             "sk_ratio": arch.sk_ratio, "small_stem": arch.small_stem,
                             "num_proj_layers": arch.num_proj_layers,
                             "proj_out_dim": arch.proj_out_dim,
                             "linear_head_classes": arch.num_classes},
            "variables": len(mapping),
            "parameters": int(sum(int(v.numpy().size) for v in mapping.values())),
            "encoder_trainable_parameters": int(sum(
                int(v.numpy().size) for v in model.encoder.trainable_variables)),
            "skipped": len(skipped)}
    rundir.write_json(fileio.join(out, rundir.IMPORT_JSON), info)
    log.info("%d variables imported, %d skipped (optimizer slots, step%s)", len(mapping),
             len(skipped), ", raw copies" if ema else "")
    return info


def main(argv: list[str] | None = None) -> int:
    args = cli.start(build_parser(), argv)

    def body() -> int:
        import tensorflow as tf

        fileio.check_url(args.simclr_tf1, "--simclr-tf1")
        fileio.check_url(args.out, "--out")
        try:
            info = import_simclr_tf1(args.simclr_tf1, args.out, args.depth, args.width,
                                     args.sk, args.ema)
        except tf.errors.OpError as e:  # an unreadable or truncated checkpoint
            raise cli.UsageError(f"cannot read {args.simclr_tf1}: {e.message}") from None
        a = info["architecture"]
        print(f"imported ResNet-{a['depth']} ({a['width_multiplier']}x"
              f"{', SK' if a['sk_ratio'] else ''}) from {info['source']}: "
              f"{info['variables']} variables, {info['encoder_trainable_parameters']:,} "
              f"encoder parameters; run folder {args.out} (checkpoint {info['checkpoint']})")
        return 0

    return cli.run("tfmicle.import_checkpoint", body)


if __name__ == "__main__":
    raise SystemExit(main())
