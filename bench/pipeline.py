"""Input-pipeline speed, measured so it holds (bench/sides.py: each side in its own
process, one side at a time, interleaved rounds, CPU use and interference reported).

Default: pretraining's end-to-end step rate (records -> decode -> augment -> model)
over the model-only step rate on one cached batch (same model, batch, image size), for
SimCLR and MICLe; and model-only mixed_bfloat16 over float32.

    python bench/pipeline.py [--rounds 5] [--steps 30] [--batch 64] [--size 64]

--pipeline-only: the input pipeline alone (no model) at 224 px, batch 64 (x2 views), at
the shuffle buffer training uses (data.shuffle_buffer, 10,000), with and without blur,
SimCLR and MICLe; photo-sized inputs: HAM10000's own 600x450 JPEGs and lesions (cases)
when ../shared/data/ham10000 is beside the clone, else synthetic 600x450 JPEGs. With
--reference DIR (google-research/simclr's tf2 folder, holding data_util.py; not part of
tfmicle) SimCLR's own tf.data pipeline runs on the same JPEG bytes as another side.

    python bench/pipeline.py --pipeline-only [--reference ~/src/simclr/tf2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sides  # noqa: E402
from tfmicle.config import Config  # noqa: E402
from tfmicle.data import records  # noqa: E402
from tfmicle.data.augment import preset  # noqa: E402
from tfmicle.data.pipeline import PipelineConfig, pretrain_dataset  # noqa: E402
from tfmicle.optim import LARS  # noqa: E402
from tfmicle.build import contrastive_model as build_contrastive_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HAM10000 = os.path.join(HERE, "..", "..", "shared", "data", "ham10000")
TRAINING_BUFFER = Config().data.shuffle_buffer     # what training uses, not a bench value


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


def reference_pipeline(data_util, jpegs: list[bytes], batch: int, size: int,
                       blur: bool = True):
    """SimCLR's own tf2 pipeline (data.py's build_input_fn for pretraining) on these
    JPEG bytes: TFDS would decode each image whole; here tf.io.decode_jpeg does it.
    blur: its batch_random_blur after batching (SimCLR's pretraining default)."""
    def map_fn(encoded):
        image = tf.image.convert_image_dtype(tf.io.decode_jpeg(encoded, channels=3),
                                             tf.float32)
        views = [data_util.preprocess_for_train(image, size, size, color_jitter_strength=1.0)
                 for _ in range(2)]
        return tf.concat(views, -1)

    def blur_batch(images):
        v1, v2 = tf.split(images, 2, axis=-1)
        return tf.concat(data_util.batch_random_blur([v1, v2], size, size), -1)

    options = tf.data.Options()
    options.deterministic = False               # as SimCLR's input_fn sets for training
    options.experimental_slack = True
    ds = tf.data.Dataset.from_tensor_slices(jpegs).with_options(options)
    ds = ds.shuffle(batch * 10).repeat()
    ds = ds.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
    if blur:
        ds = ds.map(blur_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def ham_records(out: str, n_images: int) -> list[bytes]:
    """HAM10000's first lesions (metadata order) up to n_images photos, as cases (a
    lesion's photos are one case, as data_prep groups them) in one shard; the JPEG bytes."""
    with open(os.path.join(HAM10000, "HAM10000_metadata.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    by_lesion: dict[str, list[str]] = {}
    for r in rows:
        by_lesion.setdefault(r["lesion_id"], []).append(r["image_id"])
    jpegs, n_cases = [], 0
    with tf.io.TFRecordWriter(os.path.join(out, records.shard_name("train", 0, 1))) as w:
        for lesion, ids in by_lesion.items():
            if len(jpegs) >= n_images:
                break
            imgs = []
            for i in ids:
                for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
                    p = os.path.join(HAM10000, part, i + ".jpg")
                    if os.path.isfile(p):
                        imgs.append(open(p, "rb").read())
            if imgs:
                w.write(records.encode_case(lesion, imgs, ids[:len(imgs)], label_class=0)
                        .SerializeToString())
                jpegs += imgs
                n_cases += 1
    with open(os.path.join(out, records.DATASET_JSON), "w") as f:
        json.dump({"schema_version": records.SCHEMA_VERSION, "task": "multiclass",
                   "class_names": ["a"],
                   "splits": {"train": {"cases": n_cases, "images": len(jpegs)}}}, f)
    return jpegs


def _next_n(ds, n: int):
    """After a warm-up, the timed work: n more batches of ds."""
    it = iter(ds)
    for _ in range(3):                            # warm up: tracing, first reads, buffer
        next(it)

    def work() -> int:
        for _ in range(n):
            next(it)
        return n
    return work


def _load_reference(folder: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "simclr_data_util", os.path.join(os.path.expanduser(folder), "data_util.py"))
    data_util = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data_util)
    return data_util


def side_pipeline(a) -> None:
    """One pipeline-only side (in its own process): views/s over a.batches batches."""
    name, blur = a.side.rsplit("-", 1)
    if name == "reference":
        with open(os.path.join(a.data, "jpegs.list")) as f:
            paths = f.read().split()
        jpegs = [open(p, "rb").read() for p in paths]
        ds = reference_pipeline(_load_reference(a.reference), jpegs, a.batch, 224,
                                blur == "blur")
    else:
        aug = preset("simclr") if blur == "blur" else dataclasses.replace(
            preset("simclr"), blur_p=0.0)
        pcfg = PipelineConfig(a.data, "train", a.batch, 224, shuffle_buffer=a.buffer)
        ds = pretrain_dataset(name, pcfg, aug)
    window = sides.timed_window(_next_n(ds, a.batches))
    sides.emit(window["amount"] * 2 * a.batch / window["wall_s"], "views/s", window)


def side_model(a) -> None:
    """One training side: steps/s of end-to-end (e2e-METHOD) or model-only on one cached
    batch (model-METHOD, model-bf16 for mixed_bfloat16)."""
    kind, method = a.side.split("-", 1)
    cfg = Config()
    cfg.data.image_size = a.size
    cfg.model.depth, cfg.model.width_multiplier = 18, a.width
    cfg.model.num_proj_layers, cfg.model.proj_out_dim = 2, 64
    if method == "bf16":
        method, cfg.train.precision = "simclr", "mixed_bfloat16"
    pcfg = PipelineConfig(a.data, "train", a.batch, a.size, shuffle_buffer=a.buffer)
    ds = pretrain_dataset(method, pcfg, preset("simclr"))
    if kind == "model":
        ds = tf.data.Dataset.from_tensors(next(iter(ds))).repeat()
    model = build_contrastive_model(cfg, num_classes=3)
    model.compile(optimizer=LARS(0.1, weight_decay=1e-6), jit_compile=False)
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)   # trace + warm up

    def work() -> int:
        model.fit(ds, steps_per_epoch=a.steps, epochs=1, verbose=0)
        return a.steps
    window = sides.timed_window(work)
    sides.emit(window["amount"] / window["wall_s"], "steps/s", window)


def pipeline_only(a, script: str, d: str) -> None:
    if os.path.isdir(HAM10000):
        jpegs = ham_records(d, a.jpegs)
        what = f"{len(jpegs)} HAM10000 photos (600x450 JPEGs, lesions as cases)"
    else:
        jpegs = make_jpeg_records(d, a.jpegs)
        what = f"{len(jpegs)} synthetic 600x450 JPEGs (no ../shared/data/ham10000 here)"
    paths = []
    for i, b in enumerate(jpegs):      # the reference reads the same bytes from files
        paths.append(os.path.join(d, f"{i}.jpg"))
        with open(paths[-1], "wb") as f:
            f.write(b)
    with open(os.path.join(d, "jpegs.list"), "w") as f:
        f.write("\n".join(paths))
    names = ["simclr", "micle"] + (["reference"] if a.reference else [])
    common = ["--data", d, "--batch", str(a.batch), "--batches", str(a.batches),
              "--buffer", str(a.buffer)] + (["--reference", a.reference] if a.reference else [])
    runs = {f"{n}-{b}": sides.child_argv(script, "--side", f"{n}-{b}", "--pipeline-only",
                                         *common)
            for b in ("blur", "noblur") for n in names}
    print(f"input pipeline only: {what} -> 224 px, batch {a.batch} (x2 views), "
          f"shuffle buffer {a.buffer}, {a.batches} timed batches a run, {a.rounds} rounds")
    results = sides.interleave(runs, a.rounds)
    for k, r in results.items():
        print(sides.summary_line(k, r))
    if a.reference:
        for b in ("blur", "noblur"):
            for n in ("simclr", "micle"):
                print(sides.ratio_line(f"{n}-{b}", f"reference-{b}", results))


def model_sides(a, script: str, d: str) -> None:
    make_records(d, a.cases, a.size)
    common = ["--data", d, "--batch", str(a.batch), "--steps", str(a.steps), "--size",
              str(a.size), "--width", str(a.width), "--buffer", str(a.buffer)]
    names = ["e2e-simclr", "model-simclr", "e2e-micle", "model-micle", "model-bf16"]
    runs = {n: sides.child_argv(script, "--side", n, *common) for n in names}
    print(f"narrow ResNet-18 (width {a.width}), {a.size} px, batch {a.batch}, "
          f"{a.steps} timed steps a run, shuffle buffer {a.buffer}, {a.rounds} rounds")
    results = sides.interleave(runs, a.rounds)
    for k, r in results.items():
        print(sides.summary_line(k, r))
    for m in ("simclr", "micle"):
        print(sides.ratio_line(f"e2e-{m}", f"model-{m}", results))
    print(sides.ratio_line("model-bf16", "model-simclr", results) + "  (bf16 / float32)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--buffer", type=int, default=TRAINING_BUFFER,
                    help=f"shuffle buffer (default: training's, {TRAINING_BUFFER})")
    ap.add_argument("--pipeline-only", action="store_true",
                    help="input pipeline alone at 224 px from photo-sized JPEGs (see above)")
    ap.add_argument("--reference", metavar="DIR",
                    help="with --pipeline-only: google-research/simclr's tf2 folder")
    ap.add_argument("--jpegs", type=int, default=600)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--side", help=argparse.SUPPRESS)      # a child: one side, one run
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        (side_pipeline if a.pipeline_only else side_model)(a)
        return
    from machine import machine_line
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as d:
        (pipeline_only if a.pipeline_only else model_sides)(a, os.path.abspath(__file__), d)


if __name__ == "__main__":
    main()
