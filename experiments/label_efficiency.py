"""Experiment 2: label efficiency on Fashion-MNIST: does SimCLR pretraining on many
unlabeled images make a few labels worth as much as many? Compared against a
from-scratch baseline that gets the same care (learning rate and training length chosen
on validation).

The setting is the hospital one, scaled to 2 CPU cores: many unlabeled images, few
labels. By default:

1. Data. Read the official IDX files (Debian package dataset-fashion-mnist,
   /usr/share/datasets/fashion-mnist), write the images as PNGs and two CSV manifests,
   and run data_prep (``data_prep.convert``, the code behind ``python -m data_prep``):
   - labeled records: ``validation`` = 1,000 training images (class-stratified,
     seeded), ``train`` = the *labeled pool*, 2,000 other training images
     (class-stratified, seed 0, disjoint from validation), ``test`` = the official 10k
     t10k images; data_prep's nested, class-stratified label subsets of the pool at the
     label fractions (default 10 % = 200 images and 100 % = 2,000 images);
   - unlabeled records: all 60k training images, no label column.
2. SimCLR pretraining (``tfmicle.train.pretrain.pretrain``, 1,000 steps of batch 64)
   on the unlabeled records, once, with the first seed (``--pretrain-per-seed``: once
   per seed).
3. Fine-tuning of every layer (``tfmicle.train.finetune.finetune``) from the SimCLR
   checkpoint and from scratch, with the same optimizer, schedule, augmentation and
   budget. Each run trains for a step budget per fraction (default 200 steps for 10 %,
   about 64 epochs of 200 images; 600 steps for 100 %, about 19 epochs of 2,000) and
   validates 6 times; the checkpoint kept is the best by validation accuracy, so the
   training length is chosen on validation. The learning rate is chosen on validation
   too, separately for each initialisation and fraction: a grid (default 0.02, 0.1) on
   the first seed; the best LR is used for every seed. Wider settings
   (``--finetune-steps 400,1200 --lr-grid 0.02,0.1,0.3``) take about 1.5x as long.
4. Test accuracy of each final run's kept checkpoint (``tfmicle.rundir.load_classifier``)
   on the 10k t10k images, measured once per run and never used for a choice.
5. results.json / results.md / results.png: test accuracy mean ± std (ddof 1) over the
   seeds (default 0, 1, 2), per-seed rows, the LR grid's validation numbers (rejected
   settings too), the step of each best validation (runs whose best came at their last
   validation are flagged: they may not have converged), and a sentence, generated from
   the numbers, saying whether SimCLR + 10 % labels reaches scratch + 100 %.

    python experiments/label_efficiency.py            # default: 30.5 min measured on 2
                                                      # shared CPU cores
    python experiments/label_efficiency.py --quick    # CI: every stage at tiny sizes, ~2 min
    python experiments/label_efficiency.py --labeled-pool 0 --validation-size 5000 \\
        --pretrain-steps 20000 --finetune-steps 3000,20000 --width 1 --batch-size 512 \\
        --lr-grid 0.05,0.1,0.2 --seeds 0,1,2 --set distribute.strategy=mirrored  # GPUs

Run time of the default, measured: 30.5 min on 2 CPU cores shared with another job
(data preparation ~2 min, SimCLR pretraining 7.8 min, 16 fine-tuning runs of 0.5-1.5
min, 12 test passes of ~11 s).

Layout: the data (Fashion-MNIST, the pool, manifests) is in experiments/fashion_mnist.py,
the report in experiments/label_efficiency_report.py; this file (about 500 lines, a
third of them this protocol) holds the configs, the LR grid, the final runs and the CLI.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time

import numpy as np

if __package__ in (None, ""):           # run as a script: make `experiments` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402
from experiments.fashion_mnist import (CLASS_NAMES, FASHION_DIR, carve_pool,  # noqa: E402,F401
                                       carve_validation, load_fashion_mnist, prepare_records,
                                       read_idx, stratified_head, write_images,
                                       write_manifests)
from experiments.label_efficiency_report import (INITS, LABELS, markdown, plot,  # noqa: E402,F401
                                                 run_name, summarise, verdict)

NAME = "label_efficiency"
log = logging.getLogger(NAME)


DEFAULTS = dict(seeds=[0, 1, 2], width=0.25, depth=18, image_size=28, batch_size=64,
                pretrain_steps=1000, finetune_steps=[200, 600], fractions=[0.1, 1.0],
                labeled_pool=2000, validation_size=1000, lr_grid=[0.02, 0.1],
                validations=6, train_limit=0, test_limit=0)
QUICK = dict(seeds=[0], width=0.125, depth=18, image_size=28, batch_size=16,
             pretrain_steps=4, finetune_steps=[6, 6], fractions=[0.1, 1.0],
             labeled_pool=300, validation_size=200, lr_grid=[0.05], validations=2,
             train_limit=1500, test_limit=500)



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


def eval_every(steps: int, validations: int) -> int:
    """Validation period giving ~`validations` validations in a run of `steps` steps (the
    last step is always validated)."""
    return max(int(math.ceil(steps / max(validations, 1))), 1)


def finetune_config(a, init: str, fraction: float, steps: int, lr: float, data_dir: str,
                    model_dir: str, checkpoint: str, seed: int, n_labeled: int):
    """Identical for both initialisations except finetune.init / checkpoint (and the
    learning rate, which each chooses on validation)."""
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
                  "optimizer": "momentum", "learning_rate": lr, "lr_scaling": "none",
                  "momentum": 0.9, "weight_decay": 0.0, "seed": seed,
                  "checkpoint_steps": steps, "keep_checkpoints": 1,
                  "log_steps": max(min(100, steps // 4), 1)},
        "finetune": {"init": "checkpoint" if init == "simclr" else "scratch",
                     "checkpoint": checkpoint if init == "simclr" else "",
                     "fine_tune_after_block": -1, "best_metric": "val_accuracy",
                     "eval_every_steps": eval_every(steps, a.validations),
                     # as README's measured runs (the default became SimCLR's false)
                     "zero_init_head": True},
    }
    return common.make_config(extra, a.overrides)


def test_accuracy(model_dir: str, data_dir: str, image_size: int) -> dict:
    """Accuracy of the run's best checkpoint (by validation) on the test split."""
    import tensorflow as tf
    from tfmicle.metrics import top_k_accuracy
    from tfmicle.rundir import load_classifier
    from tfmicle.train.validation import eval_batches

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


def validation_curve(model_dir: str) -> list[list[float]]:
    """[[step, val_accuracy], ...] from the run's validation log."""
    from tfmicle.rundir import VALIDATION_LOG
    path = os.path.join(model_dir, VALIDATION_LOG)
    out = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    v = json.loads(line)
                    out.append([int(v["step"]), v.get("val_accuracy")])
    return out


def best_at_last_validation(row: dict) -> bool:
    """True when the run's best validation accuracy came at its last validation (it may
    still have been improving)."""
    curve = row.get("validation_curve") or []
    best = row.get("best_validation") or {}
    return bool(curve) and best.get("step") == curve[-1][0]


def finetune_run(a, init: str, fraction: float, steps: int, lr: float, seed: int,
                 data_dir: str, checkpoint: str, mdir: str, n_labeled: int) -> dict:
    """One fine-tuning run (validation only: the test split is scored separately, for
    the final runs)."""
    from tfmicle.train.finetune import finetune

    if os.path.isdir(mdir):
        shutil.rmtree(mdir)
    cfg = finetune_config(a, init, fraction, steps, lr, data_dir, mdir, checkpoint, seed,
                          n_labeled)
    log.info("seed %d: fine-tuning from %s on %g of the pool (%d images), LR %g, %d steps "
             "(%.1f epochs), validating every %d steps", seed, init, fraction, n_labeled, lr,
             steps, steps * a.batch_size / n_labeled, cfg.finetune.eval_every_steps)
    t, c = time.time(), time.process_time()
    res = finetune(cfg, verbose=a.verbose)
    row = {"seed": seed, "init": init, "fraction": fraction, "learning_rate": lr,
           "labeled_images": n_labeled, "budget_steps": steps, "steps": res["end_step"],
           "epochs": res["end_step"] * a.batch_size / n_labeled,
           "best_validation": res["best"], "validation_curve": validation_curve(mdir),
           "seconds": time.time() - t, "cpu_seconds": time.process_time() - c}
    row["best_at_last_validation"] = best_at_last_validation(row)
    log.info("seed %d: %s, %g of the pool, LR %g: best validation accuracy %.4f at step "
             "%s of %d%s (%.0f s)", seed, init, fraction, lr, res["best"]["value"],
             res["best"]["step"], res["end_step"],
             " = the last validation" if row["best_at_last_validation"] else "",
             row["seconds"])
    return row


def add_test(row: dict, mdir: str, data_dir: str, image_size: int) -> dict:
    t = time.time()
    test = test_accuracy(mdir, data_dir, image_size)
    row.update(test_accuracy=test["accuracy"], test_images=test["images"],
               test_seconds=time.time() - t)
    log.info("seed %d: %s, %g of the pool, LR %g: test accuracy %.4f (%d images)",
             row["seed"], row["init"], row["fraction"], row["learning_rate"],
             test["accuracy"], test["images"])
    return row


def choose_lr(grid_rows: list[dict], init: str, fraction: float) -> float:
    """The grid's LR with the best validation accuracy for (init, fraction); ties go to
    the first LR in grid order."""
    sel = [r for r in grid_rows if r["init"] == init and r["fraction"] == fraction]
    if not sel:
        raise ValueError(f"no grid run for {init} at fraction {fraction:g}")
    best = max(sel, key=lambda r: (r["best_validation"]["value"]
                                   if r["best_validation"]["value"] is not None else -1.0))
    return best["learning_rate"]


def lr_dir(work: str, init: str, fraction: float, lr: float, seed: int) -> str:
    return os.path.join(work, f"seed{seed}", f"ft_{init}_{fraction:g}_lr{lr:g}")


def run_all(a, labeled_dir: str, unlabeled_dir: str, work: str, n_labeled: dict):
    """Pretraining, the LR grid on the first seed, the final runs of every seed.
    Returns (pretraining rows, grid rows, final rows, chosen LRs, pretraining config)."""
    from tfmicle.train.pretrain import pretrain

    pre_rows, pre_cfg, pre_dirs = [], None, {}

    def pretrained(seed: int) -> str:
        key = seed if a.pretrain_per_seed else a.seeds[0]
        if key in pre_dirs:
            return pre_dirs[key]
        nonlocal pre_cfg
        pdir = os.path.join(work, f"pretrain_simclr_seed{key}")
        if os.path.isdir(pdir):
            shutil.rmtree(pdir)
        pre_cfg = pretrain_config(a, unlabeled_dir, pdir, key)
        log.info("SimCLR pretraining (seed %d) on %d unlabeled images for %d steps", key,
                 a.num_unlabeled, a.pretrain_steps)
        t, c = time.time(), time.process_time()
        res = pretrain(pre_cfg, verbose=a.verbose)
        pre_rows.append({"seed": key, "steps": res["end_step"],
                         "final_loss": res["final_metrics"].get("loss"),
                         "seconds": time.time() - t, "cpu_seconds": time.process_time() - c})
        pre_dirs[key] = pdir
        return pdir

    first = a.seeds[0]
    grid, final, chosen = [], [], {}
    ckpt = pretrained(first)
    for fraction, steps in zip(a.fractions, a.finetune_steps):
        for init in INITS:
            rows = []
            for lr in a.lr_grid:
                mdir = lr_dir(work, init, fraction, lr, first)
                rows.append(finetune_run(a, init, fraction, steps, lr, first, labeled_dir,
                                         ckpt, mdir, n_labeled[fraction]))
            lr = choose_lr(rows, init, fraction)
            chosen[f"{init} {fraction:g}"] = lr
            log.info("%s, %g of the pool: LR %g chosen on validation (grid %s)", init,
                     fraction, lr, ", ".join(f"{r['learning_rate']:g}: "
                                             f"{r['best_validation']['value']:.4f}"
                                             for r in rows))
            for r in rows:
                r["chosen"] = r["learning_rate"] == lr
                mdir = lr_dir(work, init, fraction, r["learning_rate"], first)
                if r["chosen"]:
                    final.append(add_test(dict(r), mdir, labeled_dir, a.image_size))
                if not a.keep_work:
                    shutil.rmtree(mdir, ignore_errors=True)
            grid += rows
    for seed in a.seeds[1:]:
        ckpt = pretrained(seed)
        for fraction, steps in zip(a.fractions, a.finetune_steps):
            for init in INITS:
                lr = chosen[f"{init} {fraction:g}"]
                mdir = lr_dir(work, init, fraction, lr, seed)
                row = finetune_run(a, init, fraction, steps, lr, seed, labeled_dir, ckpt, mdir,
                                   n_labeled[fraction])
                row["chosen"] = True
                final.append(add_test(row, mdir, labeled_dir, a.image_size))
                if not a.keep_work:
                    shutil.rmtree(mdir, ignore_errors=True)
    return pre_rows, grid, final, chosen, pre_cfg


# --------------------------------------------------------------------------- main

def _steps_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 200,600, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("steps must be >= 1")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python experiments/label_efficiency.py",
        description="Label efficiency on Fashion-MNIST: SimCLR pretraining on the 60k "
                    "training images without labels, then fine-tuning on 10 %% and 100 %% "
                    "of a labeled pool vs training from scratch, learning rate and training "
                    "length chosen on validation for both; test accuracy on t10k, mean ± std "
                    "over seeds. Writes results.json, results.md and results.png to --out.")
    common.add_common_args(p, NAME)
    p.add_argument("--fashion-dir", default=FASHION_DIR,
                   help=f"folder with the four IDX .gz files (default {FASHION_DIR})")
    p.add_argument("--fractions", type=common.float_list, default=None, metavar="F,F,...",
                   help="label fractions of the labeled pool (default 0.1,1; other "
                        "fractions need --finetune-steps)")
    p.add_argument("--labeled-pool", type=int, default=None, metavar="N",
                   help="labeled training images (class-stratified, seed 0, disjoint from "
                        "validation) the fractions are taken of; 0: every training image "
                        "not in validation (default 2000; --quick: 300)")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help=f"SimCLR steps (default {DEFAULTS['pretrain_steps']})")
    p.add_argument("--pretrain-per-seed", action="store_true",
                   help="pretrain once per seed (default: once, with the first seed; the "
                        "seeds then vary the fine-tuning only)")
    p.add_argument("--finetune-steps", type=_steps_list, default=None, metavar="N,N,...",
                   help="fine-tuning step budget per label fraction, one value for all or "
                        "one per fraction (default "
                        + ",".join(map(str, DEFAULTS["finetune_steps"])) + "); the kept "
                        "checkpoint is the best by validation within the budget")
    p.add_argument("--validations", type=int, default=None, metavar="N",
                   help="validations per fine-tuning run (default 6)")
    p.add_argument("--lr-grid", type=common.float_list, default=None, metavar="LR,LR,...",
                   help="fine-tuning learning rates tried on the first seed, per "
                        "initialisation and fraction; the best on validation is used for "
                        "every seed (default "
                        + ",".join(f"{x:g}" for x in DEFAULTS["lr_grid"]) + ")")
    p.add_argument("--validation-size", type=int, default=None,
                   help="training images carved out for validation (default 1000)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="use a stratified subsample of this many training images for "
                        "everything (0: all 60k; --quick: 1500)")
    p.add_argument("--test-limit", type=int, default=None,
                   help="use a stratified subsample of this many test images "
                        "(0: all 10k; --quick: 500)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the images, records and checkpoints in OUT/work")
    a = p.parse_args(argv)
    base = QUICK if a.quick else DEFAULTS
    steps_given = a.finetune_steps is not None
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, list(v) if isinstance(v, list) else v)
    if len(a.finetune_steps) == 1:
        a.finetune_steps = a.finetune_steps * len(a.fractions)
    if len(a.finetune_steps) != len(a.fractions):
        p.error(f"--finetune-steps: {len(a.finetune_steps)} values for "
                f"{len(a.fractions)} fractions" + ("" if steps_given else
                                                   " (give --finetune-steps)"))
    if any(not 0 < f <= 1 for f in a.fractions):
        p.error("--fractions must be in (0, 1]")
    if len(set(a.fractions)) != len(a.fractions):
        p.error("--fractions must differ")
    if a.pretrain_steps < 1 or a.batch_size < 2 or a.width <= 0:
        p.error("--pretrain-steps >= 1, --batch-size >= 2 and --width > 0 are required")
    if not a.lr_grid or min(a.lr_grid) <= 0:
        p.error("--lr-grid: learning rates must be > 0")
    if a.validations < 1:
        p.error("--validations must be >= 1")
    if a.validation_size < len(CLASS_NAMES):
        p.error(f"--validation-size must be >= {len(CLASS_NAMES)} (one image per class)")
    if a.labeled_pool < 0:
        p.error("--labeled-pool must be >= 0")
    if len(set(a.seeds)) != len(a.seeds):
        p.error("--seeds must differ")
    a.lr_grid = list(dict.fromkeys(a.lr_grid))
    order = np.argsort(a.fractions)
    a.fractions = [a.fractions[i] for i in order]
    a.finetune_steps = [a.finetune_steps[i] for i in order]
    return a


def main(argv=None) -> int:
    if common.dataset_of(argv, "fashion_mnist") == "ham10000":
        from experiments import ham_label_efficiency
        return ham_label_efficiency.main(argv)
    a = parse_args(argv)
    common.setup_logging()
    clock = common.Stopwatch()
    cpu0 = time.process_time()
    from tfmicle.config import ConfigError
    try:
        common.make_config({}, a.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    data = load_fashion_mnist(a.fashion_dir)
    # Subsamples (quick mode), the validation split and the labeled pool do not depend on
    # the run seed: every seed trains, validates and is tested on the same data.
    train_idx = stratified_head(data["train"][1], a.train_limit, 0)
    test_idx = stratified_head(data["test"][1], a.test_limit, 0)
    is_val, is_pool = carve_pool(data["train"][1][train_idx], a.labeled_pool,
                                 a.validation_size, 0)
    t = time.time()
    img_root = os.path.join(work, "images")
    rels = write_images(img_root, data, train_idx, test_idx)
    labeled_csv, unlabeled_csv = write_manifests(img_root, data, rels, train_idx, test_idx,
                                                 is_val, is_pool)
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
    log.info("records: labeled %s (train = the labeled pool), unlabeled %d (data_prep %.0fs)",
             splits, a.num_unlabeled, data_seconds)

    from tfmicle.data import records
    from tfmicle.train.finetune import count_labeled
    n_labeled = {}
    for f in a.fractions:
        ids = None if f >= 1 else tuple(records.read_subset(labeled_dir, "train", f))
        n_labeled[f] = count_labeled(labeled_dir, "train", "multiclass", ids)[1]
        if n_labeled[f] == 0:
            raise SystemExit(f"error: fraction {f:g} of the {splits.get('train', 0)}-image "
                             "pool has no image: raise --labeled-pool")

    pre_rows, grid, rows, chosen, pre_cfg = run_all(a, labeled_dir, unlabeled_dir, work,
                                                    n_labeled)
    flagged = [run_name(r) + f" (best at step {r['best_validation']['step']} of "
               f"{r['steps']})" for r in grid + [r for r in rows if r["seed"] != a.seeds[0]]
               if r["best_at_last_validation"]]

    from tfmicle.config import to_dict
    ft_example = finetune_config(a, "simclr", a.fractions[0], a.finetune_steps[0],
                                 a.lr_grid[0], labeled_dir, "", "<pretraining run>",
                                 a.seeds[0], 1)
    summary = summarise(rows, a.fractions)
    result = {
        "experiment": NAME, "command": common.command_line(),
        "settings": {k: getattr(a, k) for k in (
            "seeds", "width", "depth", "image_size", "batch_size", "pretrain_steps",
            "pretrain_per_seed", "finetune_steps", "fractions", "labeled_pool", "lr_grid",
            "validations", "validation_size", "train_limit", "test_limit", "quick",
            "overrides")},
        "data": {"source": a.fashion_dir, "unlabeled_images": a.num_unlabeled,
                 "train_images": splits.get("train", 0),
                 "validation_images": splits.get("validation", 0),
                 "test_images": splits.get("test", 0),
                 "label_subsets": info_l.get("subsets", {}).get("train", {}),
                 "data_prep_seconds": data_seconds},
        "pretrain_config": to_dict(pre_cfg) | {"model_dir": ""},
        "finetune_config": to_dict(ft_example) | {"model_dir": ""},
        "pretraining": pre_rows, "grid": grid, "chosen_learning_rates": chosen,
        "runs": rows, "not_converged": flagged, "summary": summary,
        "verdict": verdict(summary, a.fractions),
        "wall_seconds": clock(), "cpu_seconds": time.process_time() - cpu0,
        "environment": common.environment(),
    }
    result["finetune_config"]["finetune"]["note"] = (
        "init scratch has no checkpoint; data.label_fraction, train.train_steps, "
        "train.warmup_epochs, finetune.eval_every_steps and train.learning_rate (chosen "
        "on validation per init and fraction) follow the run")
    common.write_outputs(a.out, result, markdown, plot, None if a.keep_work else work, log,
                         clock())
    return 0


if __name__ == "__main__":
    sys.exit(main())
