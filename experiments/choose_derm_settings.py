"""Choosing the dermatology pretraining augmentation and learning rate on validation
lesions, never on held-out ones (the settings Experiment 1, the demo and
configs/derm_*.yaml ship).

Per search seed:
1. the lesions are split exactly as micle_vs_simclr.py splits them for that seed; the
   held-out lesions are dropped and never read;
2. validation lesions (--val-fraction of the pretraining lesions) are carved out; the
   rest are the search's pretraining lesions;
3. stage 1: every augmentation candidate pretrains MICLe and SimCLR (Experiment 1's
   encoder, budget and optimizer) and is scored by same-lesion retrieval on the
   validation lesions (leakage-filtered mAP, as Experiment 1);
4. stage 2: the best candidate (mean of the MICLe and SimCLR mAP, so the choice does
   not favour one method) is rerun at half and twice the learning rate.
The winner is the best (candidate, learning rate) by the same mean.

    python experiments/choose_derm_settings.py            # ~40 min on 2 CPU cores
    python experiments/choose_derm_settings.py --quick    # CI smoke run
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

import numpy as np

if __package__ in (None, ""):           # run as a script: make `experiments` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402
from experiments import micle_vs_simclr as exp1  # noqa: E402
from tfmicle.retrieval import shared_block_mask  # noqa: E402

NAME = "choose_derm_settings"
log = logging.getLogger(NAME)

# Stage 1 candidates: full augmentation settings (overrides on Experiment 1's config),
# starting from what Experiment 1 shipped before this search: SimCLR's CIFAR-10 recipe.
BEFORE = ["data.augment=simclr", "data.color_strength=0.5", "data.color_p=0.8",
          "data.grayscale_p=0.2", "data.crop_min_area=0.08", "data.blur=false",
          "train.learning_rate=0.075"]
CANDIDATES = {
    "simclr_cifar": BEFORE,                                   # colour jitter s 0.5, p 0.8
    "no_colour_jitter": BEFORE + ["data.color_p=0"],
    "no_colour_no_gray": BEFORE + ["data.color_p=0", "data.grayscale_p=0"],
    "weak_jitter": BEFORE + ["data.color_strength=0.2"],
    "no_colour_crop25": BEFORE + ["data.color_p=0", "data.crop_min_area=0.25"],
    "no_colour_blur": BEFORE + ["data.color_p=0", "data.blur=true"],
}
BASE_LR = 0.075
LR_FACTORS = (0.5, 2.0)
SEARCH_SEEDS = [100]
QUICK_CANDIDATES = ("simclr_cifar", "no_colour_jitter")


def score(entry: dict) -> float:
    """The selection score: mean of the MICLe and SimCLR validation mAP."""
    return float(np.mean([entry["micle"]["map"], entry["simclr"]["map"]]))


def run_candidate(a, name: str, overrides: list[str], data_dir: str, sdir: str, seed: int,
                  patches, leak_all) -> dict:
    a2 = argparse.Namespace(**{**vars(a), "overrides": list(a.overrides) + overrides})
    runs = {m: exp1.run_pretraining(m, a2, data_dir, os.path.join(sdir, f"{name}_{m}"), seed)
            for m in ("micle", "simclr")}
    ev = exp1.evaluate_seed(seed, patches, leak_all, data_dir, runs)
    out = {m: {**ev["methods"][m]["filtered"], "final_loss": runs[m]["final_loss"],
               "seconds": runs[m]["seconds"]} for m in ("micle", "simclr")}
    out["random_init"] = ev["methods"]["random_init"]["filtered"]
    out["overrides"] = overrides
    for m in ("micle", "simclr"):
        shutil.rmtree(os.path.join(sdir, f"{name}_{m}"), ignore_errors=True)
    log.info("%s: val mAP MICLe %.3f SimCLR %.3f (random-init %.3f)", name,
             out["micle"]["map"], out["simclr"]["map"], out["random_init"]["map"])
    return out


def markdown(result: dict) -> str:
    lines = ["# Choosing the derm pretraining augmentation and learning rate\n",
             f"Validation lesions carved from Experiment 1's pretraining lesions (held-out "
             f"lesions never read); search seed(s) {result['settings']['seeds']}; "
             f"{result['settings']['steps']} steps of batch {result['settings']['batch_size']}"
             f", ResNet-{result['settings']['depth']} width {result['settings']['width']:g}. "
             f"Score: mean of MICLe and SimCLR leakage-filtered validation mAP.\n"]
    rows = []
    for name, per_seed in result["trials"].items():
        e = {k: common.mean_std([s[k]["map"] for s in per_seed])
             for k in ("micle", "simclr", "random_init")}
        t1 = {k: common.mean_std([s[k]["top1"] for s in per_seed]) for k in ("micle", "simclr")}
        ov = per_seed[0]["overrides"]
        rows.append([name, " ".join(o for o in ov[len(BEFORE):]) if ov[:len(BEFORE)] == BEFORE
                     else " ".join(ov),
                     common.fmt_pm(e["micle"]), common.fmt_pm(e["simclr"]),
                     common.fmt_pm(e["random_init"]), common.fmt_pm(t1["micle"]),
                     common.fmt_pm(t1["simclr"]),
                     f"{np.mean([score(s) for s in per_seed]):.3f}"])
    lines.append(common.markdown_table(
        ["trial", "overrides", "MICLe mAP", "SimCLR mAP", "random-init mAP", "MICLe top-1",
         "SimCLR top-1", "score"], rows))
    lines.append(f"\nEvery trial starts from `{' '.join(BEFORE)}` (Experiment 1's settings "
                 f"before this search) and changes what its row lists.\n")
    lines.append(f"\n**Chosen:** `{result['chosen']}` "
                 f"(`{' '.join(result['chosen_overrides'][len(BEFORE):]) or 'no change'}`).\n")
    lines.append(f"\nCommand: `{result['command']}`; wall time "
                 f"{result['wall_seconds'] / 60:.1f} min.\n")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["trials"])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    x = np.arange(len(names))
    for off, m, c in ((-0.2, "micle", "#c0392b"), (0.2, "simclr", "#2471a3")):
        ax.bar(x + off, [np.mean([s[m]["map"] for s in result["trials"][n]]) for n in names],
               0.4, color=c, label=m)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("validation mAP")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    if common.dataset_of(argv, "ph2") == "ham10000":
        from experiments import ham_micle
        return ham_micle.main(argv, search=True)
    p = argparse.ArgumentParser(prog="python experiments/choose_derm_settings.py",
                                description=__doc__.split("\n\n")[0])
    common.add_common_args(p, NAME)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of the pretraining lesions used for validation")
    a = p.parse_args(argv)
    base = exp1.QUICK if a.quick else exp1.DEFAULTS
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.seeds == exp1.DEFAULTS["seeds"] or a.quick:
        a.seeds = SEARCH_SEEDS
    common.setup_logging()
    clock = common.Stopwatch()
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    root = exp1.patches_root()
    patches, _ = exp1.load_patches(root)
    leak_all = shared_block_mask([q.pixels for q in patches], block=4)
    lesions = sorted({q.lesion for q in patches})
    candidates = ({k: CANDIDATES[k] for k in QUICK_CANDIDATES} if a.quick else CANDIDATES)

    trials: dict[str, list] = {}
    prepared = []
    for seed in a.seeds:
        pretrain_lesions, _heldout = exp1.split_lesions(lesions, a.heldout_fraction, seed)
        fit, val = exp1.split_lesions(pretrain_lesions, a.val_fraction, seed + 1000)
        sdir = os.path.join(work, f"seed{seed}")
        os.makedirs(sdir, exist_ok=True)
        keep = [q for q in patches if q.lesion in set(pretrain_lesions)]
        manifest = os.path.join(sdir, "manifest.csv")
        exp1.write_manifest(manifest, keep, set(val))   # "heldout" split = validation here
        data_dir = os.path.join(sdir, "records")
        exp1.prepare_records(manifest, root, data_dir, seed, a.workers)
        prepared.append((seed, sdir, data_dir))
        log.info("seed %d: %d search-pretraining lesions, %d validation lesions", seed,
                 len(fit), len(val))

    def run_all(name, overrides):
        trials[name] = [run_candidate(a, name, overrides, data_dir, sdir, seed, patches,
                                      leak_all) for seed, sdir, data_dir in prepared]

    for name, ov in candidates.items():
        run_all(name, ov)
    best = max(trials, key=lambda n: np.mean([score(s) for s in trials[n]]))
    if not a.quick:
        for f in LR_FACTORS:
            run_all(f"{best}_lr{f:g}x", candidates[best] + [
                f"train.learning_rate={BASE_LR * f:g}"])
    chosen = max(trials, key=lambda n: np.mean([score(s) for s in trials[n]]))
    result = {"experiment": NAME, "command": common.command_line(),
              "settings": {k: getattr(a, k) for k in ("seeds", "steps", "width", "depth",
                                                      "batch_size", "heldout_fraction",
                                                      "val_fraction", "quick")},
              "trials": trials, "chosen": chosen,
              "chosen_overrides": trials[chosen][0]["overrides"],
              "wall_seconds": clock(), "environment": common.environment()}
    common.write_outputs(a.out, result, markdown, plot, work, log, clock())
    return 0


if __name__ == "__main__":
    sys.exit(main())
