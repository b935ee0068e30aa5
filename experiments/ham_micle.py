"""Experiment 1 on HAM10000 (``micle_vs_simclr.py --dataset ham10000 --data DIR``) and
the derm settings search on its validation lesions (``choose_derm_settings.py --dataset
ham10000 --data DIR``).

Per seed, on one lesion split (experiments/ham10000.py): MICLe and SimCLR pretrain the
same encoder for the same steps, batch, optimizer and seed on the train lesions' photos
(labels unused); then, on the test lesions, the MICLe, SimCLR and random-init encoders
(and colour statistics, and chance) are measured by same-lesion retrieval over distinct
photos and by a linear probe of the 7 diagnoses (trained on the train lesions' frozen
features, C chosen on validation lesions).

The search pretrains both methods for each candidate setting and scores it, as declared
before it ran, by the mean of MICLe's and SimCLR's retrieval mAP on the validation
lesions (the test lesions are not read).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys


if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common, ham10000  # noqa: E402
from experiments.ham10000 import HAM10000_CLASSES_N  # noqa: E402

NAME = "micle_vs_simclr_ham10000"
SEARCH_NAME = "choose_derm_settings_ham10000"
log = logging.getLogger(NAME)

METHODS = ("micle", "simclr", "random_init", "colour_stats")
LABELS = {"micle": "MICLe", "simclr": "SimCLR", "random_init": "random-init encoder",
          "colour_stats": "colour statistics", "chance": "chance"}

DEFAULTS = dict(seeds=[0, 1, 2], steps=800, width=0.5, depth=18, image_size=64,
                batch_size=64, split_seed=0)
QUICK = dict(seeds=[0], steps=4, width=0.125, depth=18, image_size=32, batch_size=16,
             split_seed=0)

# The settings Experiment 1 runs with on HAM10000: chosen by the search below on
# validation lesions (experiments/README.md has its table). The rest is the PH2
# experiment's (pretraining.pretrain_config).
CHOSEN: dict[str, str] = {"data.color_p": "0.8", "data.color_strength": "0.2"}

# Candidates of the search: changes from the PH2-chosen derm settings (no colour jitter,
# no grayscale, LARS 0.0375, temperature 0.2, crop area >= 0.08).
CANDIDATES = {
    "derm_ph2": {},
    "weak_colour": {"data.color_p": "0.8", "data.color_strength": "0.2"},
    "crop25": {"data.crop_min_area": "0.25"},
    "temp0.1": {"train.temperature": "0.1"},
    "lr2x": {"train.learning_rate": "0.075"},
}


def parse_args(argv=None, search: bool = False) -> argparse.Namespace:
    name = SEARCH_NAME if search else NAME
    p = argparse.ArgumentParser(
        prog="python experiments/" + ("choose_derm_settings.py" if search
                                      else "micle_vs_simclr.py") + " --dataset ham10000",
        description="HAM10000: " + ("derm pretraining settings chosen on validation lesions"
                                    if search else "MICLe vs SimCLR vs random init: "
                                    "retrieval of distinct photos and a linear probe on "
                                    "held-out lesions"))
    common.add_common_args(p, name)
    p.add_argument("--dataset", default="ham10000", choices=("ham10000",))
    p.add_argument("--data", default=ham10000.default_data_dir(),
                   help="the HAM10000 folder in its download layout (default "
                        "../shared/data/ham10000 when present)")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps per method")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the lesion split (fixed across --seeds; default 0)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep records and checkpoints in OUT/work (label_efficiency.py "
                        "--dataset ham10000 --pretrained OUT/work reuses them)")
    if search:
        p.add_argument("--candidates", default=",".join(CANDIDATES),
                       help=f"candidate settings (default all: {', '.join(CANDIDATES)})")
    a = p.parse_args(argv)
    base = QUICK if a.quick else DEFAULTS
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if search and not a.quick and a.seeds == DEFAULTS["seeds"]:
        a.seeds = [0]
    if not a.data or not os.path.isfile(os.path.join(a.data, "HAM10000_metadata.csv")):
        p.error(f"--data {a.data or '(none)'}: no HAM10000_metadata.csv there")
    return a


def pretrain(method: str, a, data_dir: str, model_dir: str, seed: int,
             overrides: list[str]) -> dict:
    """One pretraining run with Experiment 1's settings (pretraining.pretrain_config)
    plus overrides; the PH2 experiment's function, so both share one definition."""
    from experiments.pretraining import run_pretraining
    b = argparse.Namespace(**vars(a))
    b.overrides = ["data.shuffle_buffer=10000"] + list(overrides) + list(a.overrides)
    return run_pretraining(method, b, data_dir, model_dir, seed)


def features(cfg, checkpoint: str | None, seed: int, datasets: dict) -> dict:
    """{split: pooled encoder features [N, C]} for a checkpoint (None: random init)."""
    from tfmicle.rundir import load_encoder
    from tfmicle.retrieval import features_of
    enc = load_encoder(cfg, checkpoint, seed)
    return {s: features_of(enc, ds, want=())[0] for s, ds in datasets.items()}


def colour_features(datasets: dict) -> dict:
    from tfmicle.retrieval import colour_statistics, features_of
    return {s: colour_statistics(features_of(None, ds, want=("pixels",))[1]["pixels"])
            for s, ds in datasets.items()}


def run_seed(a, seed: int, data_dir: str, work: str, datasets: dict,
             overrides: list[str]) -> dict:
    """Pretrains MICLe and SimCLR for one seed; features of datasets' splits from both
    encoders and from a random-init one."""
    runs = {}
    for method in ("micle", "simclr"):
        log.info("seed %d: pretraining %s for %d steps", seed, method, a.steps)
        runs[method] = pretrain(method, a, data_dir, os.path.join(work, f"seed{seed}", method),
                                seed, overrides)
        log.info("seed %d: %s done in %.0f s, final loss %.3f", seed, method,
                 runs[method]["seconds"], runs[method]["final_loss"])
    cfg = runs["simclr"]["cfg"]
    feats = {m: features(cfg, runs[m]["checkpoint"], seed, datasets) for m in ("micle", "simclr")}
    feats["random_init"] = features(cfg, None, seed, datasets)
    return {"runs": runs, "features": feats}


def main(argv=None, search: bool = False) -> int:
    a = parse_args(argv, search)
    common.setup_logging()
    clock = common.Stopwatch()
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    data_dir = os.path.join(work, "records")
    info = ham10000.prepare_records(a.data, data_dir, a.split_seed, a.workers)
    pairs = ham10000.near_duplicate_pairs(a.data)
    from tfmicle.config import load_config
    probe_cfg = load_config(None, [], {"data": {"image_size": a.image_size}})
    splits, datasets = {}, {}
    for s in ("train", "validation", "test") if not search else ("validation",):
        splits[s], datasets[s] = ham10000.split_images(probe_cfg, data_dir, s)
    if search:
        result = run_search(a, data_dir, work, splits, datasets, pairs)
    else:
        result = run_experiment(a, data_dir, work, splits, datasets, pairs)
    result.update({"command": common.command_line(), "wall_seconds": clock(),
                   "environment": common.environment(),
                   "records": {s: {"cases": v["cases"], "images": v["images"]}
                               for s, v in info["splits"].items()},
                   "near_duplicates": info.get("near_duplicates", {})})
    from experiments import ham_report
    common.write_outputs(a.out, result, ham_report.search_markdown if search
                         else ham_report.markdown, ham_report.search_plot if search
                         else ham_report.plot, None if a.keep_work else work, log, clock())
    return 0


def run_search(a, data_dir, work, splits, datasets, pairs) -> dict:
    names = [c.strip() for c in a.candidates.split(",") if c.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"error: unknown candidate {unknown[0]!r} ({', '.join(CANDIDATES)})")
    val = splits["validation"]
    trials = []
    for name in names:
        over = [f"{k}={v}" for k, v in CANDIDATES[name].items()]
        feats, runs = {}, {}
        for seed in a.seeds:
            r = run_seed(a, seed, data_dir, os.path.join(work, name),
                         {"validation": datasets["validation"]}, over)
            for m in ("micle", "simclr", "random_init"):
                feats.setdefault(m, []).append(r["features"][m]["validation"])
            runs[seed] = {m: _run_row(r["runs"][m]) for m in ("micle", "simclr")}
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        table = ham10000.retrieval_table(feats, val, pairs, replicates=200)
        s = table["summary"]
        score = (s["micle"]["map"] + s["simclr"]["map"]) / 2
        trials.append({"name": name, "overrides": CANDIDATES[name], "score": score,
                       "retrieval": table, "runs": runs})
        log.info("trial %s: MICLe %.3f SimCLR %.3f random %.3f -> score %.3f", name,
                 s["micle"]["map"], s["simclr"]["map"], s["random_init"]["map"], score)
    best = max(trials, key=lambda t: t["score"])
    return {"experiment": SEARCH_NAME, "settings": _settings(a), "trials": trials,
            "chosen": best["name"], "chosen_overrides": best["overrides"],
            "score": "mean of MICLe's and SimCLR's validation mAP (distinct photos)"}


def _run_row(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("cfg", "checkpoint")}


def _settings(a) -> dict:
    return {k: getattr(a, k) for k in ("seeds", "steps", "width", "depth", "image_size",
                                       "batch_size", "split_seed", "quick", "overrides")}


def run_experiment(a, data_dir, work, splits, datasets, pairs) -> dict:
    colour = colour_features(datasets)
    feats: dict[str, list] = {}
    per_seed = []
    cfg = None
    for seed in a.seeds:
        log.info("=== seed %d ===", seed)
        r = run_seed(a, seed, data_dir, work, datasets,
                     [f"{k}={v}" for k, v in CHOSEN.items()])
        r["features"]["colour_stats"] = colour
        cfg = r["runs"]["simclr"]["cfg"]
        for m in METHODS:
            feats.setdefault(m, []).append(r["features"][m])
        per_seed.append({"seed": seed, "pretraining": {m: _run_row(r["runs"][m])
                                                       for m in ("micle", "simclr")},
                         "positive_similarity": {
                             m: ham10000.positive_similarity(r["features"][m]["test"],
                                                             splits["test"], pairs)
                             for m in METHODS}})
        if not a.keep_work:
            shutil.rmtree(os.path.join(work, f"seed{seed}"), ignore_errors=True)
    test = splits["test"]
    retrieval = ham10000.retrieval_table({m: [f["test"] for f in feats[m]] for m in METHODS},
                                         test, pairs)
    probe = {}
    for m in METHODS:
        rows = []
        for f in feats[m]:
            rows.append(ham10000.linear_probe(
                (f["train"], splits["train"].labels), (f["validation"],
                                                      splits["validation"].labels),
                (f["test"], test.labels), HAM10000_CLASSES_N))
        probe[m] = ham10000.probe_summary(rows, test.labels, test.lesions, HAM10000_CLASSES_N)
    from tfmicle.config import to_dict
    return {"experiment": NAME, "settings": _settings(a), "chosen_settings": dict(CHOSEN),
            "pretrain_config": to_dict(cfg) | {"method": "simclr | micle", "model_dir": ""},
            "retrieval": retrieval, "probe": probe, "per_seed": per_seed}


if __name__ == "__main__":
    sys.exit(main())
