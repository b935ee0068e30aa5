"""Experiment 2 on HAM10000 (``label_efficiency.py --dataset ham10000 --data DIR``): does
self-supervised pretraining on the training lesions' photos (labels unused) give a
better 7-class classifier with 10 % of the labelled training lesions, and does it reach
supervised training with 100 %? Does MICLe add over SimCLR?

Arms: fine-tuning of the whole network from the MICLe encoder, from the SimCLR encoder
(Experiment 1's pretraining runs: --pretrained OUT/work of micle_vs_simclr.py --dataset
ham10000 --keep-work, or pretrained here with the same settings) and from random init
(supervised only), each with data_prep's nested, class-stratified 10 % and 100 % subsets
of the train lesions.

Every arm gets the same care, chosen on validation lesions on the first seed: the
learning rate (grid, with balanced class weights), then class weights none vs balanced
at that rate; the training length is the best validation checkpoint of a fixed budget.
Score, declared before any run: the mean of validation macro AUC and validation
balanced accuracy of the kept checkpoint. The chosen settings are used for every seed;
test lesions are scored once per final run (macro AUC, balanced accuracy, per-class
recall, with 95 % CIs by lesion bootstrap of the seed mean).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common, ham10000  # noqa: E402

NAME = "label_efficiency_ham10000"
log = logging.getLogger(NAME)

INITS = ("micle", "simclr", "scratch")
FRACTIONS = (0.1, 1.0)
DEFAULTS = dict(seeds=[0, 1, 2], width=0.5, depth=18, image_size=64, batch_size=64,
                split_seed=0, steps=800, finetune_steps=[300, 500], lr_grid=[0.03, 0.1])
QUICK = dict(seeds=[0], width=0.125, depth=18, image_size=32, batch_size=16, split_seed=0,
             steps=4, finetune_steps=[4, 6], lr_grid=[0.05])
VALIDATIONS = 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python experiments/label_efficiency.py --dataset ham10000",
        description="HAM10000 label efficiency: MICLe / SimCLR / random init fine-tuned "
                    "with 10 %% and 100 %% of the labelled train lesions")
    common.add_common_args(p, NAME)
    p.add_argument("--dataset", default="ham10000", choices=("ham10000",))
    p.add_argument("--data", default=ham10000.default_data_dir(),
                   help="the HAM10000 folder (default ../shared/data/ham10000 when present)")
    p.add_argument("--pretrained", default="",
                   help="Experiment 1's work folder (records/ and seedN/{micle,simclr}); "
                        "default: pretrain here with Experiment 1's settings")
    p.add_argument("--steps", type=int, default=None,
                   help="pretraining steps when pretraining here (default 800)")
    p.add_argument("--split-seed", type=int, default=None, help="lesion split seed (0)")
    p.add_argument("--finetune-steps", type=_ints, default=None, metavar="S10,S100",
                   help="fine-tuning budget at 10 %% and 100 %% (default 300,500)")
    p.add_argument("--lr-grid", type=common.float_list, default=None, metavar="LR,...",
                   help="learning rates tried on validation (default 0.03,0.1)")
    p.add_argument("--keep-work", action="store_true", help="keep OUT/work")
    a = p.parse_args(argv)
    base = QUICK if a.quick else DEFAULTS
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if not a.data or not os.path.isfile(os.path.join(a.data, "HAM10000_metadata.csv")):
        p.error(f"--data {a.data or '(none)'}: no HAM10000_metadata.csv there")
    return a


def _ints(text: str) -> list[int]:
    v = [int(t) for t in text.split(",")]
    if len(v) != 2:
        raise argparse.ArgumentTypeError("two step counts: 10 % and 100 %")
    return v


def finetune_config(a, init: str, fraction: float, lr: float, class_weight: str,
                    data_dir: str, model_dir: str, checkpoint: str, seed: int,
                    n_labeled: int):
    """Identical for every arm except finetune.init / checkpoint and the settings each
    arm chooses on validation (LR, class weights)."""
    steps = a.finetune_steps[FRACTIONS.index(fraction)]
    extra = {
        "mode": "finetune", "model_dir": model_dir,
        "data": {"dir": data_dir, "train_split": "train", "eval_split": "validation",
                 "image_size": a.image_size, "augment": "derm", "crop_min_area": 0.5,
                 "shuffle_buffer": 10_000, "cache": True, "label_fraction": fraction},
        "model": {"depth": a.depth, "width_multiplier": a.width, "global_bn": False,
                  "num_proj_layers": 2, "proj_out_dim": 64},
        "train": {"batch_size": a.batch_size, "train_steps": steps,
                  "warmup_epochs": 0.05 * steps * a.batch_size / max(n_labeled, 1),
                  "optimizer": "momentum", "learning_rate": lr, "lr_scaling": "none",
                  "momentum": 0.9, "weight_decay": 0.0, "seed": seed,
                  "checkpoint_steps": steps, "keep_checkpoints": 1,
                  "log_steps": max(min(100, steps // 4), 1)},
        "finetune": {"init": "scratch" if init == "scratch" else "checkpoint",
                     "checkpoint": "" if init == "scratch" else checkpoint,
                     "fine_tune_after_block": -1, "best_metric": "val_auc",
                     "eval_every_steps": max(steps // VALIDATIONS, 1),
                     "class_weight": class_weight, "zero_init_head": True},
    }
    return common.make_config(extra, a.overrides)


def evaluate(model_dir: str, data_dir: str, split: str, image_size: int) -> dict:
    """Macro AUC, balanced accuracy, per-class recall of the run's kept checkpoint (the best
    by validation; the latest when no validation defined the metric) on a
    split, plus its probabilities, labels and case ids (for the bootstrap)."""
    import tensorflow as tf
    from tfmicle.rundir import load_classifier
    from tfmicle.train.validation import eval_batches
    model, _, info, _ = load_classifier(model_dir, "auto")   # best, else latest
    predict = tf.function(lambda x: tf.nn.softmax(model(x, training=False)),
                          reduce_retracing=True)
    probs, labels, cases = [], [], []
    for b in eval_batches(data_dir, split, info["num_classes"], 256, image_size):
        probs.append(predict(b["image"]).numpy())
        labels.append(b["label_class"].numpy())
        cases.append(b["case_id"].numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels).astype(int)
    out = ham10000.probe_metrics(labels, probs, info["num_classes"])
    out.update(probs=probs, labels=labels,
               lesions=np.array([c.decode() for c in np.concatenate(cases)]))
    return out


def run(a, init, fraction, lr, cw, seed, data_dir, checkpoint, mdir, n_labeled) -> dict:
    from tfmicle.train.finetune import finetune
    if os.path.isdir(mdir):
        shutil.rmtree(mdir)
    cfg = finetune_config(a, init, fraction, lr, cw, data_dir, mdir, checkpoint, seed,
                          n_labeled)
    t = time.time()
    res = finetune(cfg, verbose=a.verbose)
    val = evaluate(mdir, data_dir, "validation", a.image_size)
    row = {"seed": seed, "init": init, "fraction": fraction, "learning_rate": lr,
           "class_weight": cw, "labeled_images": n_labeled, "steps": res["end_step"],
           "best": res["best"], "val_macro_auc": val["macro_auc"],
           "val_balanced_accuracy": val["balanced_accuracy"],
           "score": (val["macro_auc"] + val["balanced_accuracy"]) / 2,
           "seconds": time.time() - t}
    log.info("seed %d %s %g LR %g cw %s: best val_auc %s at step %s of %d; val bal.acc "
             "%.3f; score %.4f (%.0f s)", seed, init, fraction, lr, cw, res["best"]["value"],
             res["best"]["step"], res["end_step"], val["balanced_accuracy"], row["score"],
             row["seconds"])
    return row


def _score(row: dict) -> float:
    """The selection score; an undefined one (a validation split missing classes) loses."""
    v = row["score"]
    return v if v == v else -float("inf")


def main(argv=None) -> int:
    a = parse_args(argv)
    common.setup_logging()
    clock = common.Stopwatch()
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    if a.pretrained:
        data_dir = os.path.join(a.pretrained, "records")
    else:
        data_dir = os.path.join(work, "records")
        ham10000.prepare_records(a.data, data_dir, a.split_seed, a.workers)
    from tfmicle.data.records import load_dataset_info, read_subset
    from tfmicle.train.finetune import count_labeled
    info = load_dataset_info(data_dir)
    n_labeled = {f: count_labeled(data_dir, "train", "multiclass",
                                  tuple(read_subset(data_dir, "train", f)))[1]
                 for f in FRACTIONS}

    checkpoints, pretraining = {}, {}
    for seed in a.seeds:
        for m in ("micle", "simclr"):
            d = os.path.join(a.pretrained or work, f"seed{seed}", m)
            if not a.pretrained:
                from experiments import ham_micle
                r = ham_micle.pretrain(m, a, data_dir, d, seed,
                                       [f"{k}={v}" for k, v in ham_micle.CHOSEN.items()])
                pretraining[f"{seed}/{m}"] = {k: v for k, v in r.items()
                                              if k not in ("cfg", "checkpoint")}
            elif not os.path.isdir(os.path.join(d, "checkpoints")):
                raise SystemExit(f"error: --pretrained {a.pretrained}: no {m} run for seed "
                                 f"{seed} ({d})")
            checkpoints[(seed, m)] = d

    def mdir(init, f, lr, cw, seed):
        return os.path.join(work, f"seed{seed}", f"ft_{init}_{f:g}_lr{lr:g}_{cw}")

    seed0 = a.seeds[0]
    grid, chosen, finals = [], {}, []
    for init in INITS:
        for f in FRACTIONS:
            rows = []
            for lr in a.lr_grid:
                rows.append(run(a, init, f, lr, "balanced", seed0, data_dir,
                                checkpoints.get((seed0, init), ""),
                                mdir(init, f, lr, "balanced", seed0), n_labeled[f]))
            best = max(rows, key=_score)
            rows.append(run(a, init, f, best["learning_rate"], "none", seed0, data_dir,
                            checkpoints.get((seed0, init), ""),
                            mdir(init, f, best["learning_rate"], "none", seed0), n_labeled[f]))
            best = max(rows, key=_score)
            chosen[f"{init}/{f:g}"] = {"learning_rate": best["learning_rate"],
                                       "class_weight": best["class_weight"]}
            grid += rows
            test = evaluate(mdir(init, f, best["learning_rate"], best["class_weight"], seed0),
                            data_dir, "test", a.image_size)
            finals.append({**best, "test": test})
            for r in rows:
                if r is not best:
                    shutil.rmtree(mdir(init, f, r["learning_rate"], r["class_weight"],
                                       seed0), ignore_errors=True)
    for seed in a.seeds[1:]:
        for init in INITS:
            for f in FRACTIONS:
                c = chosen[f"{init}/{f:g}"]
                d = mdir(init, f, c["learning_rate"], c["class_weight"], seed)
                row = run(a, init, f, c["learning_rate"], c["class_weight"], seed, data_dir,
                          checkpoints.get((seed, init), ""), d, n_labeled[f])
                finals.append({**row, "test": evaluate(d, data_dir, "test", a.image_size)})
                shutil.rmtree(d, ignore_errors=True)
    result = {"experiment": NAME, "command": common.command_line(),
              "settings": {k: getattr(a, k) for k in (
                  "seeds", "width", "depth", "image_size", "batch_size", "split_seed",
                  "finetune_steps", "lr_grid", "quick", "overrides", "pretrained")},
              "labeled_images": {f"{k:g}": v for k, v in n_labeled.items()},
              "records": {s: {"cases": v["cases"], "images": v["images"]}
                          for s, v in info["splits"].items()},
              "grid": grid, "chosen": chosen, "pretraining": pretraining,
              "summary": summarise(finals, a.seeds),
              "finals": [{k: v for k, v in r.items() if k != "test"} | {
                  "test": {k: v for k, v in r["test"].items()
                           if k not in ("probs", "labels", "lesions")}} for r in finals],
              "wall_seconds": clock(), "environment": common.environment()}
    from experiments import ham_le_report
    common.write_outputs(a.out, result, ham_le_report.markdown, ham_le_report.plot,
                         None if a.keep_work else work, log, clock())
    return 0


def summarise(finals: list[dict], seeds: list[int]) -> dict:
    """{init/fraction: {macro_auc, balanced_accuracy: {mean, std, ci, values}, recall}}
    and paired differences of the key comparisons (CIs by lesion bootstrap of the
    seed means, the same resampled lesions for both sides)."""
    from tfmicle.metrics import bootstrap_ci
    arms = {}
    for r in finals:
        arms.setdefault(f"{r['init']}/{r['fraction']:g}", []).append(r["test"])
    any_test = finals[0]["test"]
    labels, lesions = any_test["labels"], any_test["lesions"]
    k = any_test["probs"].shape[1]
    groups = ham10000.lesion_groups(lesions, np.arange(len(labels)))

    def arm_stat(tests, rows):
        ms = [ham10000.probe_metrics(labels[rows], t["probs"][rows], k) for t in tests]
        return {m: float(np.mean([x[m] for x in ms]))
                for m in ("macro_auc", "balanced_accuracy")}
    comparisons = [("micle/0.1", "scratch/1"), ("simclr/0.1", "scratch/1"),
                   ("micle/0.1", "scratch/0.1"), ("simclr/0.1", "scratch/0.1"),
                   ("micle/0.1", "simclr/0.1"), ("micle/1", "simclr/1"),
                   ("micle/1", "scratch/1"), ("simclr/1", "scratch/1")]

    def stat(rows):
        out = {}
        per = {a: arm_stat(t, rows) for a, t in arms.items()}
        for a, v in per.items():
            out.update({f"{a}|{m}": x for m, x in v.items()})
        for a, b in comparisons:
            if a in per and b in per:
                for m in ("macro_auc", "balanced_accuracy"):
                    out[f"{a}-{b}|{m}"] = per[a][m] - per[b][m]
        return out
    ci = bootstrap_ci(stat, groups, replicates=500, seed=0)
    summary = {"arms": {}, "diff": {}}
    for a, tests in arms.items():
        s = {}
        for m in ("macro_auc", "balanced_accuracy"):
            v = [t[m] for t in tests]
            s[m] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))
                    if len(v) > 1 else 0.0, "values": v, "ci": ci[f"{a}|{m}"]}
        s["recall"] = np.mean([t["recall"] for t in tests], axis=0).tolist()
        summary["arms"][a] = s
    for a, b in comparisons:
        if a in arms and b in arms:
            summary["diff"][f"{a}-{b}"] = {
                m: {"mean": summary["arms"][a][m]["mean"] - summary["arms"][b][m]["mean"],
                    "ci": ci[f"{a}-{b}|{m}"]} for m in ("macro_auc", "balanced_accuracy")}
    return summary


if __name__ == "__main__":
    sys.exit(main())
