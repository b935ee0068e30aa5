"""Experiment 2: label efficiency on Fashion-MNIST: does SimCLR pretraining on the
training images (without labels) cut the labels needed?

1. Read the official IDX files (Debian package dataset-fashion-mnist,
   /usr/share/datasets/fashion-mnist), write the images as PNGs and two CSV manifests,
   and run data_prep (``data_prep.convert``, the code behind ``python -m data_prep``):
   - labeled: train (the 60k training images less a validation split carved from them,
     seeded), validation, and test = the official t10k images; nested, stratified
     label subsets of train at the label fractions (default 1 %, 10 %, 100 %);
   - unlabeled: all 60k training images, no label column (data_prep puts them in its
     "unlabeled" split).
2. SimCLR pretraining (``tfmicle.pretrain.pretrain``) on the unlabeled records.
3. For each label fraction, fine-tune (``tfmicle.finetune.finetune``, every layer) from
   the SimCLR checkpoint and from scratch, with the same label subset, step budget,
   optimizer, augmentation and seed; the checkpoint kept is the best by validation
   accuracy (validation split, never the test split).
4. Test accuracy of that checkpoint (``tfmicle.finetune.load_classifier``) on the 10k
   t10k images, through the same eval preprocessing as export and scoring.

    python experiments/label_efficiency.py            # default: ~27 min on 2 CPU cores
    python experiments/label_efficiency.py --quick    # CI: subsampled, tiny sizes
    python experiments/label_efficiency.py --pretrain-steps 20000 --finetune-steps \\
        2000,4000,20000 --width 1 --batch-size 512 --seeds 0,1,2 \\
        --set distribute.strategy=mirrored            # on GPUs
"""
from __future__ import annotations

import argparse
import csv
import gzip
import logging
import os
import shutil
import sys
import time

import numpy as np

if __package__ in (None, ""):           # run as a script: make `experiments` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

NAME = "label_efficiency"
log = logging.getLogger(NAME)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
INITS = ("simclr", "scratch")
LABELS = {"simclr": "SimCLR-pretrained", "scratch": "from scratch"}

DEFAULTS = dict(seeds=[0], width=0.25, depth=18, image_size=28, batch_size=64,
                pretrain_steps=1500, finetune_steps=[200, 400, 600],
                fractions=[0.01, 0.1, 1.0], validation_size=5000, train_limit=0,
                test_limit=0)
QUICK = dict(seeds=[0], width=0.125, depth=18, image_size=28, batch_size=16,
             pretrain_steps=4, finetune_steps=[4, 4, 4], fractions=[0.01, 0.1, 1.0],
             validation_size=200, train_limit=1500, test_limit=500)


# --------------------------------------------------------------------------- data

def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not) -> numpy array (uint8 images [N, H, W] or labels [N])."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
             0x0E: ">f8"}.get(data[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown IDX type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def load_fashion_mnist(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images [60000, 28, 28], labels), "test": (images [10000, 28, 28], labels)}."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        paths = [os.path.join(folder, f"{prefix}-{kind}-ubyte.gz")
                 for kind in ("images-idx3", "labels-idx1")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise SystemExit(f"error: {missing[0]} not found: install Debian's "
                             "dataset-fashion-mnist (apt-get install dataset-fashion-mnist; "
                             "setup.sh does) or pass --fashion-dir")
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if len(images) != len(labels):
            raise SystemExit(f"error: {paths[0]}: {len(images)} images, {len(labels)} labels")
        out[split] = (images, labels.astype(np.int64))
    return out


def stratified_head(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified subsample of size ~n (all when n <= 0)."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = max(n // len(classes), 1)
    idx = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]
    return np.sort(np.concatenate(idx))


def carve_validation(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """bool [N]: a seeded, class-stratified validation split of ~size training images."""
    val = np.zeros(len(labels), bool)
    val[stratified_head(labels, size, seed + 1000)] = True
    return val


def write_images(root: str, data: dict, train_idx: np.ndarray, test_idx: np.ndarray) -> dict:
    """PNG per image under root/{train,test}/; returns {"train": [rel paths], "test": [...]}."""
    from PIL import Image

    rels = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images = data[split][0]
        rels[split] = []
        for i in idx:
            rel = f"{split}/{int(i):05d}.png"
            Image.fromarray(images[i], mode="L").save(os.path.join(root, rel), compress_level=1)
            rels[split].append(rel)
    return rels


def write_manifests(root: str, data: dict, rels: dict, train_idx, test_idx,
                    is_val: np.ndarray) -> tuple[str, str]:
    """labeled.csv (image, label, split) and unlabeled.csv (image) in root."""
    labeled = os.path.join(root, "labeled.csv")
    with open(labeled, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "split"])
        for rel, i, v in zip(rels["train"], train_idx, is_val):
            w.writerow([rel, CLASS_NAMES[data["train"][1][i]], "validation" if v else "train"])
        for rel, i in zip(rels["test"], test_idx):
            w.writerow([rel, CLASS_NAMES[data["test"][1][i]], "test"])
    unlabeled = os.path.join(root, "unlabeled.csv")
    with open(unlabeled, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image"])
        for rel in rels["train"]:
            w.writerow([rel])
    return labeled, unlabeled


def prepare_records(manifest: str, out: str, fractions, seed: int, workers: int,
                    labeled: bool) -> dict:
    from data_prep.convert import ConvertConfig, convert
    from data_prep.formats import FormatOptions

    cfg = ConvertConfig(
        format="csv", input=manifest, out=out,
        format_options=FormatOptions(class_names=CLASS_NAMES if labeled else None),
        split_fractions={"train": 1.0}, split_seed=seed, label_fractions=list(fractions),
        subset_splits=("train",) if labeled else (), overwrite=True, workers=workers,
        strict=True)
    return convert(cfg)


# --------------------------------------------------------------------------- training

def encoder_settings(a) -> dict:
    return {"depth": a.depth, "width_multiplier": a.width, "global_bn": False}


def pretrain_config(a, data_dir: str, model_dir: str, seed: int):
    extra = {
        "mode": "pretrain", "method": "simclr", "model_dir": model_dir,
        "data": {"dir": data_dir, "train_split": "unlabeled", "image_size": a.image_size,
                 "augment": "simclr", "color_strength": 0.5, "blur": False,
                 "shuffle_buffer": 10_000},
        "model": {**encoder_settings(a), "num_proj_layers": 2, "proj_out_dim": 64,
                  "online_probe": False},
        "train": {"batch_size": a.batch_size, "train_steps": a.pretrain_steps,
                  "warmup_epochs": 0.1 * a.pretrain_steps * a.batch_size / a.num_unlabeled,
                  "optimizer": "lars", "learning_rate": 0.075, "lr_scaling": "sqrt",
                  "weight_decay": 1e-6, "temperature": 0.2, "seed": seed,
                  "checkpoint_steps": a.pretrain_steps, "keep_checkpoints": 1,
                  "log_steps": max(min(100, a.pretrain_steps // 4), 1)},
    }
    return common.make_config(extra, a.overrides)


def finetune_config(a, init: str, fraction: float, steps: int, data_dir: str,
                    model_dir: str, checkpoint: str, seed: int, n_labeled: int):
    """Identical for both initialisations except finetune.init / checkpoint."""
    extra = {
        "mode": "finetune", "model_dir": model_dir,
        "data": {"dir": data_dir, "train_split": "train", "eval_split": "validation",
                 "image_size": a.image_size, "augment": "finetune", "crop_min_area": 0.5,
                 # The labeled subset is cached after the case filter and the shuffle
                 # buffer holds it once: a buffer larger than a small subset would make
                 # the first batch wait for many filtered passes over the whole split.
                 "shuffle_buffer": max(min(10_000, n_labeled), 1), "cache": True,
                 "label_fraction": fraction},
        "model": encoder_settings(a),
        "train": {"batch_size": a.batch_size, "train_steps": steps,
                  "warmup_epochs": 0.05 * steps * a.batch_size / max(n_labeled, 1),
                  "optimizer": "momentum", "learning_rate": 0.05, "lr_scaling": "none",
                  "momentum": 0.9, "weight_decay": 0.0, "seed": seed,
                  "checkpoint_steps": steps, "keep_checkpoints": 1,
                  "log_steps": max(min(100, steps // 4), 1)},
        "finetune": {"init": "checkpoint" if init == "simclr" else "scratch",
                     "checkpoint": checkpoint if init == "simclr" else "",
                     "fine_tune_after_block": -1, "best_metric": "val_accuracy",
                     "eval_every_steps": max(steps // 4, 1)},
    }
    return common.make_config(extra, a.overrides)


def test_accuracy(model_dir: str, data_dir: str, image_size: int) -> dict:
    """Accuracy of the run's best checkpoint (by validation) on the test split."""
    import tensorflow as tf
    from tfmicle.finetune import eval_batches, load_classifier
    from tfmicle.metrics import top_k_accuracy

    model, _, info, prefix = load_classifier(model_dir, "best")
    predict = tf.function(lambda x: tf.nn.softmax(model(x, training=False)),
                          reduce_retracing=True)
    probs, labels = [], []
    for batch in eval_batches(data_dir, "test", info["num_classes"], 256, image_size):
        probs.append(predict(batch["image"]).numpy())
        labels.append(batch["label_class"].numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    return {"accuracy": top_k_accuracy(labels, probs, 1), "images": int(len(labels)),
            "checkpoint": os.path.basename(os.path.dirname(prefix))}


def run_finetunes(a, seed: int, data_dir: str, pre_dir: str | None, sdir: str) -> list[dict]:
    from tfmicle.finetune import count_labeled, finetune
    from tfmicle.data import records

    rows = []
    for fraction, steps in zip(a.fractions, a.finetune_steps):
        ids = None if fraction >= 1 else tuple(records.read_subset(data_dir, "train", fraction))
        _, n_labeled = count_labeled(data_dir, "train", "multiclass", ids)
        for init in INITS:
            mdir = os.path.join(sdir, f"ft_{init}_{fraction:g}")
            if os.path.isdir(mdir):
                shutil.rmtree(mdir)
            cfg = finetune_config(a, init, fraction, steps, data_dir, mdir, pre_dir or "",
                                  seed, n_labeled)
            log.info("seed %d: fine-tuning from %s on %g of the labels (%d images), %d steps",
                     seed, init, fraction, n_labeled, steps)
            t = time.time()
            res = finetune(cfg, verbose=a.verbose)
            test = test_accuracy(mdir, data_dir, a.image_size)
            rows.append({"seed": seed, "init": init, "fraction": fraction,
                         "labeled_images": n_labeled, "steps": res["end_step"],
                         "best_validation": res["best"], "test_accuracy": test["accuracy"],
                         "test_images": test["images"], "seconds": time.time() - t})
            log.info("seed %d: %s, %g labels: validation %s %.4f at step %s; test accuracy "
                     "%.4f", seed, init, fraction, res["best"]["metric"],
                     res["best"]["value"], res["best"]["step"], test["accuracy"])
    return rows


# --------------------------------------------------------------------------- report

def summarise(rows: list[dict], fractions) -> dict:
    out = {}
    for init in INITS:
        out[init] = {}
        for f in fractions:
            sel = [r for r in rows if r["init"] == init and r["fraction"] == f]
            out[init][f"{f:g}"] = {
                "test_accuracy": common.mean_std([r["test_accuracy"] for r in sel]),
                "validation_accuracy": common.mean_std([r["best_validation"]["value"]
                                                        for r in sel]),
                "labeled_images": sel[0]["labeled_images"] if sel else 0,
                "steps": sel[0]["steps"] if sel else 0}
    return out


def markdown(result: dict) -> str:
    s, st = result["summary"], result["settings"]
    fr = st["fractions"]
    n_seeds = len(st["seeds"])
    spread = (f"mean ± std (ddof 1) over {n_seeds} seeds {st['seeds']}" if n_seeds > 1
              else f"one seed ({st['seeds'][0]}): no spread measured")
    d = result["data"]
    lines = ["# Label efficiency on Fashion-MNIST\n",
             f"Test accuracy on the official t10k images ({d['test_images']}), {spread}. "
             f"SimCLR pretraining on {d['unlabeled_images']} training images without "
             f"labels ({st['pretrain_steps']} steps of batch {st['batch_size']}); "
             f"fine-tuning of every layer on nested, class-stratified label subsets of the "
             f"{d['train_images']} training images left after carving a "
             f"{d['validation_images']}-image validation split, from the SimCLR checkpoint "
             f"or from scratch with identical settings; the checkpoint kept is the best by "
             f"validation accuracy. ResNet-{st['depth']} width {st['width']:g} at "
             f"{st['image_size']} px. Wall time {result['wall_seconds'] / 60:.1f} min.\n"]
    header = ["initialisation"] + [f"{f:.0%} labels ({s['scratch'][f'{f:g}']['labeled_images']}"
                                   f" images, {s['scratch'][f'{f:g}']['steps']} steps)"
                                   for f in fr]
    rows = [[LABELS[i]] + [common.fmt_pm(s[i][f"{f:g}"]["test_accuracy"], 4) for f in fr]
            for i in INITS]
    rows.append(["difference (SimCLR − scratch)"] + [
        f"{s['simclr'][f'{f:g}']['test_accuracy']['mean'] - s['scratch'][f'{f:g}']['test_accuracy']['mean']:+.4f}"
        for f in fr])
    lines.append(common.markdown_table(header, rows))
    lines.append("\nValidation accuracy of the kept checkpoints (the split used for model "
                 "selection):\n")
    rows = [[LABELS[i]] + [common.fmt_pm(s[i][f"{f:g}"]["validation_accuracy"], 4)
                           for f in fr] for i in INITS]
    lines.append(common.markdown_table(["initialisation"] + [f"{f:.0%}" for f in fr], rows))
    p = result["pretraining"]
    lines.append("\nPretraining: " + "; ".join(
        f"seed {r['seed']}: {r['steps']} steps, final loss {r['final_loss']:.3f}, "
        f"{r['seconds'] / 60:.1f} min" for r in p) + ".\n")
    lines.append(f"\nCommand: `{result['command']}`\n")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, st = result["summary"], result["settings"]
    fr = st["fractions"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for init, colour in zip(INITS, ("#c0392b", "#2471a3")):
        m = np.array([s[init][f"{f:g}"]["test_accuracy"]["mean"] for f in fr])
        sd = np.array([s[init][f"{f:g}"]["test_accuracy"]["std"] for f in fr])
        ax.errorbar([f * 100 for f in fr], m, yerr=sd if len(st["seeds"]) > 1 else None,
                    marker="o", capsize=4, color=colour, label=LABELS[init])
    ax.set_xscale("log")
    ax.set_xticks([f * 100 for f in fr], [f"{f * 100:g} %" for f in fr])
    ax.set_xlabel("labels used (share of the training labels)")
    ax.set_ylabel("test accuracy (t10k)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Fashion-MNIST, ResNet-{st['depth']} w{st['width']:g}, "
                 f"{st['pretrain_steps']} SimCLR steps, seeds {st['seeds']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main

def _steps_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 300,500,800, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("steps must be >= 1")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python experiments/label_efficiency.py",
        description="Label efficiency on Fashion-MNIST: SimCLR pretraining without labels, "
                    "then fine-tuning on 1 %%, 10 %%, 100 %% of the labels vs training from "
                    "scratch; test accuracy on t10k. Writes results.json, results.md and "
                    "results.png to --out.")
    common.add_common_args(p, NAME)
    p.add_argument("--fashion-dir", default=FASHION_DIR,
                   help=f"folder with the four IDX .gz files (default {FASHION_DIR})")
    p.add_argument("--fractions", type=common.float_list, default=None, metavar="F,F,...",
                   help="label fractions (default 0.01,0.1,1)")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help=f"SimCLR steps (default {DEFAULTS['pretrain_steps']})")
    p.add_argument("--finetune-steps", type=_steps_list, default=None, metavar="N,N,...",
                   help="fine-tuning steps per label fraction, one value for all or one "
                        "per fraction (default "
                        + ",".join(map(str, DEFAULTS["finetune_steps"])) + ")")
    p.add_argument("--validation-size", type=int, default=None,
                   help="training images carved out for validation (default 5000)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="use a stratified subsample of this many training images "
                        "(0: all 60k; --quick: 1500)")
    p.add_argument("--test-limit", type=int, default=None,
                   help="use a stratified subsample of this many test images "
                        "(0: all 10k; --quick: 500)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the images, records and checkpoints in OUT/work")
    a = p.parse_args(argv)
    base = QUICK if a.quick else DEFAULTS
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if len(a.finetune_steps) == 1:
        a.finetune_steps = a.finetune_steps * len(a.fractions)
    if len(a.finetune_steps) != len(a.fractions):
        p.error(f"--finetune-steps: {len(a.finetune_steps)} values for "
                f"{len(a.fractions)} fractions")
    if any(not 0 < f <= 1 for f in a.fractions):
        p.error("--fractions must be in (0, 1]")
    if a.pretrain_steps < 1 or a.batch_size < 2 or a.width <= 0:
        p.error("--pretrain-steps >= 1, --batch-size >= 2 and --width > 0 are required")
    order = np.argsort(a.fractions)
    a.fractions = [a.fractions[i] for i in order]
    a.finetune_steps = [a.finetune_steps[i] for i in order]
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    common.setup_logging()
    clock = common.Stopwatch()
    from tfmicle.config import ConfigError
    try:
        common.make_config({}, a.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    data = load_fashion_mnist(a.fashion_dir)
    # Subsamples (quick mode) and the validation split do not depend on the run seed:
    # every seed trains and is tested on the same data.
    train_idx = stratified_head(data["train"][1], a.train_limit, 0)
    test_idx = stratified_head(data["test"][1], a.test_limit, 0)
    is_val = carve_validation(data["train"][1][train_idx], a.validation_size, 0)
    t = time.time()
    img_root = os.path.join(work, "images")
    rels = write_images(img_root, data, train_idx, test_idx)
    labeled_csv, unlabeled_csv = write_manifests(img_root, data, rels, train_idx, test_idx,
                                                 is_val)
    log.info("wrote %d PNGs and the manifests in %.0fs", len(train_idx) + len(test_idx),
             time.time() - t)
    labeled_dir = os.path.join(work, "records_labeled")
    unlabeled_dir = os.path.join(work, "records_unlabeled")
    t = time.time()
    info_l = prepare_records(labeled_csv, labeled_dir, a.fractions, 0, a.workers, True)
    info_u = prepare_records(unlabeled_csv, unlabeled_dir, a.fractions, 0, a.workers, False)
    data_seconds = time.time() - t
    a.num_unlabeled = info_u["splits"]["unlabeled"]["images"]
    splits = {k: v["images"] for k, v in info_l["splits"].items() if v["images"]}
    log.info("records: labeled %s, unlabeled %d (data_prep %.0fs)", splits,
             a.num_unlabeled, data_seconds)

    from tfmicle.pretrain import pretrain
    rows, pre_rows, pre_cfg = [], [], None
    for seed in a.seeds:
        sdir = os.path.join(work, f"seed{seed}")
        os.makedirs(sdir, exist_ok=True)
        pre_dir = os.path.join(sdir, "pretrain_simclr")
        if os.path.isdir(pre_dir):
            shutil.rmtree(pre_dir)
        pre_cfg = pretrain_config(a, unlabeled_dir, pre_dir, seed)
        log.info("seed %d: SimCLR pretraining on %d unlabeled images for %d steps", seed,
                 a.num_unlabeled, a.pretrain_steps)
        t = time.time()
        res = pretrain(pre_cfg, verbose=a.verbose)
        pre_rows.append({"seed": seed, "steps": res["end_step"],
                         "final_loss": res["final_metrics"].get("loss"),
                         "seconds": time.time() - t})
        rows += run_finetunes(a, seed, labeled_dir, pre_dir, sdir)
        if not a.keep_work:
            shutil.rmtree(sdir, ignore_errors=True)

    from tfmicle.config import to_dict
    ft_example = finetune_config(a, "simclr", a.fractions[0], a.finetune_steps[0], labeled_dir,
                                 "", "<pretraining run>", a.seeds[0], 1)
    result = {
        "experiment": NAME, "command": common.command_line(),
        "settings": {k: getattr(a, k) for k in (
            "seeds", "width", "depth", "image_size", "batch_size", "pretrain_steps",
            "finetune_steps", "fractions", "validation_size", "train_limit", "test_limit",
            "quick", "overrides")},
        "data": {"source": a.fashion_dir, "unlabeled_images": a.num_unlabeled,
                 "train_images": splits.get("train", 0),
                 "validation_images": splits.get("validation", 0),
                 "test_images": splits.get("test", 0),
                 "label_subsets": info_l.get("subsets", {}).get("train", {}),
                 "data_prep_seconds": data_seconds},
        "pretrain_config": to_dict(pre_cfg) | {"model_dir": ""},
        "finetune_config": to_dict(ft_example) | {"model_dir": ""},
        "pretraining": pre_rows, "runs": rows,
        "summary": summarise(rows, a.fractions),
        "wall_seconds": clock(), "environment": common.environment(),
    }
    result["finetune_config"]["finetune"]["note"] = (
        "init scratch has no checkpoint; data.label_fraction, train.train_steps and "
        "train.warmup_epochs follow the fraction")
    common.write_outputs(a.out, result, markdown, plot, None if a.keep_work else work, log,
                         clock())
    return 0


if __name__ == "__main__":
    sys.exit(main())
