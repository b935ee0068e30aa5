"""Input-pipeline overhead of pretraining: end-to-end step rate (records -> decode ->
augment -> model) divided by the model-only step rate on cached in-memory tensors (same
model, batch, image size), for the SimCLR and the MICLe pipelines; and the model-only
step rate of mixed_bfloat16 over float32. Ratios are measured side by side in one run.

    python bench/pipeline.py [--steps 30] [--batch 64] [--size 64] [--width 0.25]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfmicle.config import Config  # noqa: E402
from tfmicle.data import records  # noqa: E402
from tfmicle.data.augment import preset  # noqa: E402
from tfmicle.data.pipeline import PipelineConfig, pretrain_dataset  # noqa: E402
from tfmicle.optim import LARS  # noqa: E402
from tfmicle.train.pretrain import build_contrastive_model  # noqa: E402


def make_records(out: str, n_cases: int, size: int) -> None:
    """Cases of 1-4 JPEG images of smooth random texture, 1.25x the training size."""
    rng = np.random.default_rng(0)
    side = int(size * 1.25)
    n_images = 0
    with tf.io.TFRecordWriter(os.path.join(out, records.shard_name("train", 0, 1))) as w:
        for c in range(n_cases):
            n_images += 1 + c % 4
            imgs = []
            for _ in range(1 + c % 4):
                small = rng.integers(0, 256, (side // 8, side // 8, 3)).astype(np.uint8)
                big = tf.image.resize(small, [side, side]).numpy().astype(np.uint8)
                imgs.append(tf.io.encode_jpeg(big, quality=90).numpy())
            w.write(records.encode_case(f"c{c}", imgs, [f"{c}/{i}" for i in range(len(imgs))],
                                        label_class=c % 3).SerializeToString())
    # The counts data_prep writes; the pipelines cut their epochs by them.
    with open(os.path.join(out, records.DATASET_JSON), "w") as f:
        json.dump({"schema_version": records.SCHEMA_VERSION, "task": "multiclass",
                   "class_names": ["a", "b", "c"],
                   "splits": {"train": {"cases": n_cases, "images": n_images}}}, f)


def steps_per_second(model, ds, steps: int) -> float:
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace + warm up
    t = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - t)


def build(cfg: Config):
    m = build_contrastive_model(cfg, num_classes=3)
    m.compile(optimizer=LARS(0.1, weight_decay=1e-6), jit_compile=False)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    cfg = Config()
    cfg.data.image_size = a.size
    cfg.model.depth, cfg.model.width_multiplier = 18, a.width
    cfg.model.num_proj_layers, cfg.model.proj_out_dim = 2, 64
    with tempfile.TemporaryDirectory() as d:
        make_records(d, a.cases, a.size)
        print(f"narrow ResNet-18 (width {a.width}), {a.size} px, batch {a.batch}, "
              f"{a.steps} timed steps, {os.cpu_count()} CPUs")
        for method in ("simclr", "micle"):
            pcfg = PipelineConfig(d, "train", a.batch, a.size, shuffle_buffer=1000)
            ds = pretrain_dataset(method, pcfg, preset("simclr"))
            cached = tf.data.Dataset.from_tensors(next(iter(ds))).repeat()
            model = build(cfg)
            # Interleaved rounds (model-only, end-to-end, model-only): each round's ratio
            # uses the mean of the two model-only rates around it, so load drifting on a
            # shared machine cancels; the median round is reported.
            ratios, e2e_rates, mo_rates = [], [], []
            for _ in range(a.rounds):
                m1 = steps_per_second(model, cached, a.steps)
                e = steps_per_second(model, ds, a.steps)
                m2 = steps_per_second(model, cached, a.steps)
                ratios.append(e / ((m1 + m2) / 2))
                e2e_rates.append(e)
                mo_rates += [m1, m2]
            print(f"{method:6s}: end-to-end {np.median(e2e_rates):6.2f} steps/s, model-only "
                  f"{np.median(mo_rates):6.2f} steps/s, ratio {np.median(ratios):.3f} "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
        cached_batch = next(iter(pretrain_dataset("simclr", PipelineConfig(
            d, "train", a.batch, a.size), preset("simclr"))))
        cached = tf.data.Dataset.from_tensors(cached_batch).repeat()
        rates = {}
        for precision in ("float32", "mixed_bfloat16"):
            cfg.train.precision = precision
            rates[precision] = steps_per_second(build(cfg), cached, a.steps)
        print(f"precision: mixed_bfloat16 {rates['mixed_bfloat16']:.2f} steps/s vs float32 "
              f"{rates['float32']:.2f} steps/s, ratio {rates['mixed_bfloat16'] / rates['float32']:.2f}")


if __name__ == "__main__":
    main()
