"""Input-pipeline overhead of pretraining: end-to-end step rate (records -> decode ->
augment -> model) divided by the model-only step rate on cached in-memory tensors (same
model, batch, image size), for the SimCLR and the MICLe pipelines; and the model-only
step rate of mixed_bfloat16 over float32. Ratios are measured side by side in one run.

    python bench/pipeline.py [--steps 30] [--batch 64] [--size 64] [--width 0.25]

With --pipeline-only: the input pipeline alone (no model) at 224 px from 600x450 JPEGs
(HAM10000's size), batch 64, SimCLR and MICLe presets with colour jitter and blur: views/s
and views/s per core, interleaved rounds. With --reference DIR (a checkout's
google-research/simclr/tf2, the folder holding data_util.py; not part of tfmicle), the
reference SimCLR tf.data pipeline runs on the same JPEG bytes in the same rounds: decode
the whole image, two preprocess_for_train views (crop, flip, colour jitter strength 1),
batch, then batch_random_blur (blur applied after batching on both sides).

    python bench/pipeline.py --pipeline-only [--reference ~/src/simclr/tf2] [--batches 20]
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
from tfmicle.build import contrastive_model as build_contrastive_model  # noqa: E402


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


def make_jpeg_records(out: str, n_images: int, size=(600, 450)) -> list[bytes]:
    """n_images smooth random JPEGs of size (w, h), quality 90, grouped into cases of 1-4
    images (for MICLe) in one shard, with dataset.json; returns the JPEG bytes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]] / max(size)
    jpegs = []
    for _ in range(n_images):
        f, ph = rng.uniform(2, 8, 3), rng.uniform(0, 6.3, 3)
        img = np.stack([127 + 100 * np.sin(f[c] * (xx + yy * (c + 1)) + ph[c])
                        for c in range(3)], axis=-1).astype(np.uint8)
        jpegs.append(tf.io.encode_jpeg(img, quality=90).numpy())
    n_cases = 0
    with tf.io.TFRecordWriter(os.path.join(out, records.shard_name("train", 0, 1))) as w:
        i = 0
        while i < n_images:
            k = min(1 + n_cases % 4, n_images - i)
            w.write(records.encode_case(f"c{n_cases}", jpegs[i:i + k],
                                        [f"{n_cases}/{j}" for j in range(k)],
                                        label_class=n_cases % 3).SerializeToString())
            i += k
            n_cases += 1
    with open(os.path.join(out, records.DATASET_JSON), "w") as f:
        json.dump({"schema_version": records.SCHEMA_VERSION, "task": "multiclass",
                   "class_names": ["a", "b", "c"],
                   "splits": {"train": {"cases": n_cases, "images": n_images}}}, f)
    return jpegs


def reference_pipeline(data_util, jpegs: list[bytes], batch: int, size: int):
    """SimCLR's own tf2 pipeline (data.py's build_input_fn for pretraining) on these
    JPEG bytes: TFDS would decode each image whole; here tf.io.decode_jpeg does it."""
    def map_fn(encoded):
        image = tf.image.convert_image_dtype(tf.io.decode_jpeg(encoded, channels=3),
                                             tf.float32)
        views = [data_util.preprocess_for_train(image, size, size, color_jitter_strength=1.0)
                 for _ in range(2)]
        return tf.concat(views, -1)

    def blur(images):
        v1, v2 = tf.split(images, 2, axis=-1)
        return tf.concat(data_util.batch_random_blur([v1, v2], size, size), -1)

    options = tf.data.Options()
    options.deterministic = False               # as SimCLR's input_fn sets for training
    options.experimental_slack = True
    ds = tf.data.Dataset.from_tensor_slices(jpegs).with_options(options)
    ds = ds.shuffle(batch * 10).repeat()
    ds = ds.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
    return ds.map(blur, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def views_per_second(ds, batches: int, views_per_batch: int) -> float:
    it = iter(ds)
    for _ in range(3):                            # warm up: tracing, first reads
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * views_per_batch / (time.perf_counter() - t)


def pipeline_only(a) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as d:
        jpegs = make_jpeg_records(d, a.jpegs)
        pcfg = PipelineConfig(d, "train", a.batch, 224, shuffle_buffer=1000)
        runs = {m: pretrain_dataset(m, pcfg, preset("simclr")) for m in ("simclr", "micle")}
        if a.reference:
            import importlib.util
            spec = importlib.util.spec_from_file_location(
                "simclr_data_util", os.path.join(os.path.expanduser(a.reference), "data_util.py"))
            data_util = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(data_util)
            runs["reference"] = reference_pipeline(data_util, jpegs, a.batch, 224)
        print(f"input pipeline only: {len(jpegs)} JPEGs 600x450 -> 224 px, batch {a.batch} "
              f"(x2 views), {a.batches} timed batches per round, {cores} cores")
        rates: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.rounds):                 # interleaved: load drift hits all alike
            for k, ds in runs.items():
                rates[k].append(views_per_second(ds, a.batches, 2 * a.batch))
        for k, r in rates.items():
            spread = (max(r) - min(r)) / np.median(r)
            line = (f"{k:9s}: {np.median(r):7.1f} views/s, {np.median(r) / cores:6.1f} per core "
                    f"(rounds: {', '.join(f'{v:.0f}' for v in r)}; spread {spread:.0%})")
            if "reference" in rates and k != "reference":
                ratio = [x / y for x, y in zip(r, rates["reference"])]
                line += (f"; vs reference {np.median(ratio):.2f}x "
                         f"(rounds: {', '.join(f'{v:.2f}' for v in ratio)})")
            print(line)


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
    ap.add_argument("--pipeline-only", action="store_true",
                    help="input pipeline alone at 224 px from 600x450 JPEGs (see above)")
    ap.add_argument("--reference", metavar="DIR",
                    help="with --pipeline-only: google-research/simclr's tf2 folder")
    ap.add_argument("--jpegs", type=int, default=600)
    ap.add_argument("--batches", type=int, default=20)
    a = ap.parse_args()
    from machine import machine_line
    print(machine_line(), flush=True)
    if a.pipeline_only:
        pipeline_only(a)
        return
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
