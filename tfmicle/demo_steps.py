"""What both demos share (tfmicle.demo on PH2 patches, tfmicle.demo_ham10000 on a
HAM10000 download): running a stage as a user would, writing its config, reading a
logged scalar back, picking a number out of score's metrics.json, and the closing
commands that serve the model."""
from __future__ import annotations

import os
import subprocess
import sys
import time


def write_yaml(path: str, data: dict) -> str:
    import yaml
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def stage(title: str, module: str, args: list[str]) -> None:
    """Runs `python -m module args` as a user would, in its own process (so the demo
    imports none of the tools it drives)."""
    print(f"\n=== {title} ===", flush=True)
    t = time.time()
    code = subprocess.call([sys.executable, "-m", module, *args])
    if code:
        raise SystemExit(f"demo: stage '{title}' failed (exit {code})")
    print(f"--- {title}: {time.time() - t:.0f} s", flush=True)


def last_logged(model_dir: str, tag: str) -> float | None:
    """The last value of a Keras TensorBoard scalar (e.g. "epoch_contrast_loss") in a run's
    logs/train, as a user reads it in TensorBoard; None when it was never logged."""
    import glob

    import tensorflow as tf
    last = None
    for path in sorted(glob.glob(os.path.join(model_dir, "logs", "train", "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == tag:
                    last = (event.step, float(tf.make_ndarray(v.tensor)) if v.HasField("tensor")
                            else float(v.simple_value))
    return None if last is None else last[1]


def pick(metrics: dict, *keys):
    """First of the given (possibly nested, dotted) keys present in metrics."""
    for key in keys:
        node = metrics
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)):
            return float(node)
    return None


def serve_lines(models: str, sample: str, port: int) -> list[str]:
    """What to do next: the command that serves the exported models and a request that
    classifies the sample image (multipart upload to /classify)."""
    return ["", "Next: serve the model, then classify the sample image (another shell):",
            f"  .venv/bin/python -m serving --model-base-path {models} --port {port}",
            f"  curl -F files=@{sample} http://127.0.0.1:{port}/classify"]
