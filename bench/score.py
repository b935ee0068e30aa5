"""Batch-scoring throughput relative to the model's own batched forward pass.

    python bench/score.py [--depth 50 --width 1 --image-size 224 --images 96 --batch-size 32]

Builds a fine-tuning run (random weights: throughput does not depend on them), exports
it with tfmicle.export, writes N JPEG images (256 x 256, as a data_prep records split),
then measures side by side in one process:

- forward: the exported model's ``predict_preprocessed`` on batches already decoded and
  preprocessed in memory (the best a scorer could do);
- scoring: tfmicle.score on the records split: read the records, decode, preprocess,
  run the model, write the per-image / per-case CSVs and metrics.json (bootstrap off;
  the model is loaded once beforehand, as a server would).

Prints both throughputs and their ratio (goal >= 0.9). Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def make_run(root: str, depth: int, width: float, size: int, classes: list[str]) -> str:
    import keras
    import tensorflow as tf

    from tfmicle import rundir
    from tfmicle.config import load_config
    from tfmicle.tasks import MULTICLASS
    from tfmicle.train.finetune import build_model
    run = os.path.join(root, "run")
    cfg = load_config(None, ["mode=finetune", f"model_dir={run}", f"model.depth={depth}",
                             f"model.width_multiplier={width}", f"data.image_size={size}",
                             "finetune.init=scratch", "model.global_bn=false"])
    rundir.prepare_model_dir(cfg)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, len(classes), MULTICLASS, initialise=False, for_training=False)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                               os.path.join(run, rundir.CHECKPOINT_DIR), 1).save(0)
    with open(os.path.join(run, rundir.FINETUNE_JSON), "w") as f:
        json.dump({"task": MULTICLASS, "class_names": classes, "num_classes": len(classes),
                   "image_size": size, "encoder": "resnet"}, f)
    return run


def make_records(root: str, n: int, classes: list[str]) -> str:
    import numpy as np
    import tensorflow as tf

    from tfmicle.data import records
    d = os.path.join(root, "records")
    os.makedirs(d)
    rng = np.random.default_rng(0)
    cases = []
    for c in range(0, n, 2):  # cases of two images
        imgs = []
        for _ in range(min(2, n - c)):
            base = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            a = tf.image.resize(base[None], [256, 256]).numpy()[0].astype(np.uint8)
            imgs.append(tf.io.encode_jpeg(a, quality=90).numpy())
        cases.append(records.encode_case(f"c{c}", imgs, [f"c{c}/{i}.jpg" for i in range(len(imgs))],
                                         label_class=int(rng.integers(0, len(classes)))))
    for s in range(2):
        with tf.io.TFRecordWriter(os.path.join(d, records.shard_name("test", s, 2))) as w:
            for ex in cases[s::2]:
                w.write(ex.SerializeToString())
    with open(os.path.join(d, records.DATASET_JSON), "w") as f:
        json.dump({"schema_version": 1, "task": "multiclass", "class_names": classes,
                   "splits": {"test": {"cases": len(cases), "images": n}}}, f)
    return d


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each (best kept)")
    args = p.parse_args()
    from machine import machine_line
    print(machine_line(), flush=True)

    import tensorflow as tf

    from tfmicle import score as sc
    from tfmicle.data.augment import preprocess_eval
    from tfmicle.export import ExportOptions, export

    classes = [f"class_{i}" for i in range(7)]
    with tempfile.TemporaryDirectory() as root:
        run = make_run(root, args.depth, args.width, args.image_size, classes)
        exported = export(run, os.path.join(root, "models", "bench"),
                          ExportOptions(verify=False))
        data = make_records(root, args.images, classes)
        model = sc.load_model(exported["path"])
        fn = model.preprocessed_fn

        # Forward: the same images, decoded and preprocessed beforehand, batched in memory.
        from tfmicle.data.records import iter_cases
        encoded = [b for case in iter_cases(data, "test") for b in case.images]
        pixels = tf.stack([preprocess_eval(tf.constant(b), args.image_size) for b in encoded])
        batches = [pixels[i:i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
        for b in batches[:2]:
            fn(b)["probabilities"].numpy()  # warm-up (both batch shapes)
        fn(batches[-1])["probabilities"].numpy()
        forward, scoring = [], []
        # Alternate the two so both see the same machine load (the CPUs may be shared);
        # the first scoring pass warms tf.data and the pipeline functions up.
        for r in range(args.repeats + 1):
            if r:
                t = time.perf_counter()
                for b in batches:
                    fn(b)["probabilities"].numpy()
                forward.append(len(encoded) / (time.perf_counter() - t))
            out = os.path.join(root, f"out{r}")
            t = time.perf_counter()
            src = sc.open_source(data, model, "test")
            res = sc.score_one(model, src, out, sc.ScoreOptions(
                batch_size=args.batch_size, replicates=0))
            rate = len(res.pred.rows) / (time.perf_counter() - t)
            if r:
                scoring.append(rate)
        f, s = max(forward), max(scoring)
        print(f"model: ResNet-{args.depth} x{args.width:g} at {args.image_size} px, "
              f"{len(encoded)} JPEG images (256 px), batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, TF {tf.__version__}")
        print(f"forward (preprocessed, in memory): {f:8.1f} images/s "
              f"(passes: {', '.join(f'{v:.1f}' for v in forward)})")
        print(f"scoring (records -> files):        {s:8.1f} images/s "
              f"(passes: {', '.join(f'{v:.1f}' for v in scoring)})")
        paired = sorted(b / a for a, b in zip(forward, scoring))
        print(f"ratio scoring / forward: {s / f:.3f} (best of each; median of paired passes "
              f"{paired[len(paired) // 2]:.3f})  (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
