"""`python -m tfmicle.train`: pretraining (SimCLR / MICLe) and fine-tuning from a YAML
config. A thin CLI over tfmicle.train.pretrain and tfmicle.train.finetune."""
from __future__ import annotations

import logging

from tfmicle import cli, fileio
from tfmicle.config import CHOICES


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m tfmicle.train",
        description="Pretrain (mode: pretrain, method: simclr | micle) or fine-tune "
                    "(mode: finetune) a ResNet from a YAML config. Rerunning with the same "
                    "--model-dir resumes from its latest checkpoint.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--model-dir", help="output folder, local or a URL such as gs://bucket/run "
                   "(overrides model_dir)")
    p.add_argument("--strategy", help=" | ".join(CHOICES["distribute.strategy"]))
    p.add_argument("--tpu", help="TPU name or grpc:// address (with --strategy tpu)")
    p.add_argument("--num-cpu-devices", type=int,
                   help="mirrored on a CPU-only machine: split the CPU into N replicas")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.batch_size=64 (repeatable)")
    return cli.add_output_flags(p)


def main(argv: list[str] | None = None) -> int:
    args = cli.start(build_parser(), argv)
    from tfmicle.config import load_config

    def body() -> int:
        extra: dict = {}
        if args.model_dir:
            extra["model_dir"] = args.model_dir
        dist = {k: v for k, v in (("strategy", args.strategy), ("tpu", args.tpu),
                                  ("num_cpu_devices", args.num_cpu_devices)) if v is not None}
        if dist:
            extra["distribute"] = dist
        fileio.check_url(args.config, "--config")
        cfg = load_config(args.config, args.overrides, extra)
        if not cfg.model_dir:
            raise cli.UsageError("no model dir: pass --model-dir or set model_dir")
        for what, path in (("model_dir", cfg.model_dir), ("data.dir", cfg.data.dir),
                           ("finetune.checkpoint", cfg.finetune.checkpoint),
                           ("pretrain.checkpoint", cfg.pretrain.checkpoint)):
            fileio.check_url(path, what)
        verbose = cli.progress_style(args.quiet)  # a bar on a terminal, plain lines in a pipe
        if cfg.mode == "pretrain":
            from tfmicle.train.pretrain import pretrain
            result = pretrain(cfg, verbose=verbose)
        else:
            from tfmicle.train.finetune import finetune
            result = finetune(cfg, verbose=verbose)
        print(f"done: steps {result['start_step']} -> {result['end_step']} of "
              f"{result['total_steps']}; checkpoint {result.get('checkpoint')}")
        return 0

    from tfmicle.train.runner import NaNLossError
    try:
        return cli.run("tfmicle.train", body)
    except NaNLossError as e:
        logging.getLogger("tfmicle.train").error("%s", e)
        return 1

