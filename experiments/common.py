"""What both experiments share: command-line flags, configs through tfmicle.config,
logging, mean ± std, and writing results.json / results.md."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from typing import Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger("experiments")


def default_out(name: str) -> str:
    return os.path.join(REPO, "experiments", "results", name)


def add_common_args(p: argparse.ArgumentParser, name: str) -> None:
    """Flags both experiments take. Scaling flags default to None so each experiment's
    default / --quick sizes apply unless given."""
    p.add_argument("--out", default=default_out(name),
                   help=f"results folder (default: experiments/results/{name}/)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for CI: runs every stage in a few minutes; the numbers "
                        "mean nothing")
    p.add_argument("--seeds", type=_int_list, default=None, metavar="S,S,...",
                   help="seeds (one full repetition each)")
    p.add_argument("--width", type=float, default=None,
                   help="ResNet width multiplier")
    p.add_argument("--depth", type=int, default=None, help="ResNet depth (18, 34, 50, ...)")
    p.add_argument("--image-size", type=int, default=None, help="input size in pixels")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--workers", type=int, default=0,
                   help="data_prep worker processes (default: all cores)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                   help="extra tfmicle config override applied to every training run "
                        "(e.g. distribute.strategy=mirrored, train.precision=mixed_bfloat16); "
                        "repeatable")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="Keras progress: 0 silent, 1 bar, 2 one line per log period "
                        "(default; readable in log files)")


def dataset_of(argv, default: str) -> str:
    """The value of --dataset in argv (default when absent): the experiments dispatch on
    it before parsing the rest, since each dataset has its own flags."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # --data is no --dataset
    p.add_argument("--dataset", default=default)
    return p.parse_known_args(sys.argv[1:] if argv is None else argv)[0].dataset


def _int_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("at least one seed")
    return out


def float_list(text: str) -> list[float]:
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.01,0.1,1, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("at least one value")
    return out


def setup_logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout, force=True)
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def make_config(extra: dict, overrides: Sequence[str]):
    """A tfmicle Config from the experiment's settings (a nested dict) and the user's
    --set overrides (which win). ConfigError on a bad key or value."""
    from tfmicle.config import load_config
    return load_config(None, list(overrides), extra)


def mean_std(values: Sequence[float]) -> dict:
    """{"mean", "std" (sample std, ddof 1; 0 for one value), "n", "values"}; NaNs ignored."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if len(v) == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "values": list(values)}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v)), "values": [float(x) for x in values]}


def fmt_pm(stat: dict, digits: int = 3, scale: float = 1.0) -> str:
    if stat["n"] == 0:
        return "n/a"
    if stat["n"] == 1:
        return f"{stat['mean'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import keras
    import tensorflow as tf
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def write_json(path: str, data: dict) -> None:
    from tfmicle.metrics import to_json_safe
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(to_json_safe(data), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_outputs(out: str, result: dict, markdown, plot, work: str | None,
                  log: logging.Logger, elapsed_s: float) -> str:
    """Writes results.json, results.md (markdown(result)) and results.png (plot(result,
    path)) into out, removes the work folder when given, prints and returns the Markdown."""
    write_json(os.path.join(out, "results.json"), result)
    md = markdown(result)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    plot(result, os.path.join(out, "results.png"))
    if work:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    print(md)
    log.info("wrote %s/results.{json,md,png} in %.1f min", out, elapsed_s / 60)
    return md


def command_line() -> str:
    return " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(REPO)
                     else "python"] + sys.argv)


class Stopwatch:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self) -> float:
        return time.time() - self.t0
