"""The conversion: manifest -> plan -> runner -> shards, subsets, skipped.csv, dataset.json."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from data_prep.errors import StrictError, UserError
from data_prep.formats import read_manifest
from data_prep.manifest import FormatOptions, Manifest
from data_prep.local_runner import Progress, RunResult, run_local
from data_prep.plan import Plan, make_plan
from data_prep.splits import (DEFAULT_LABEL_FRACTIONS, DEFAULT_SPLIT_FRACTIONS,
                              validate_label_fractions, validate_split_fractions)
from data_prep.duplicates import remove_duplicates
from data_prep.near_duplicates import group_near_duplicates
from data_prep.summary import make_subsets, skip_reasons, skipped_csv, split_stats
from data_prep import writer
from tfmicle import fileio
from tfmicle.imagefiles import ImageOptions

log = logging.getLogger(__name__)


@dataclass
class ConvertConfig:
    format: str
    input: str
    out: str
    format_options: FormatOptions = field(default_factory=FormatOptions)
    split_fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLIT_FRACTIONS))
    split_seed: int = 0
    label_fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS
    subset_splits: Sequence[str] = ("train",)
    image_options: ImageOptions = field(default_factory=ImageOptions)
    shard_mb: float = 256.0
    workers: int = 0                    # 0: all cores
    runner: str = "local"               # "local" | "beam"
    beam_args: Sequence[str] = ()
    overwrite: bool = False
    strict: bool = False
    near_duplicates: str | None = None  # pairs CSV (image_a, image_b); None: the format's default


def convert(cfg: ConvertConfig, progress: Progress | None = None) -> dict:
    """Runs the whole conversion and returns the dataset.json content.

    Raises UserError for bad input (StrictError under --strict when something would be
    skipped). The output folder is only changed when the run succeeds.
    """
    t0 = time.time()
    fractions = validate_split_fractions(cfg.split_fractions)
    label_fractions = validate_label_fractions(cfg.label_fractions)
    if cfg.runner not in ("local", "beam"):
        raise UserError(f"--runner {cfg.runner!r}: use local or beam")
    check_out_not_in_input(cfg.input, cfg.out)
    writer.check_out_dir(cfg.out, cfg.overwrite)
    opts = dataclasses.replace(cfg.format_options, exclude=tuple(cfg.format_options.exclude)
                               + (fileio.abspath(cfg.out),))
    manifest = read_manifest(cfg.format, cfg.input, opts)
    duplicates = remove_duplicates(manifest)
    near = group_near_duplicates(manifest, cfg.format, cfg.input, cfg.near_duplicates)
    refused = [s for s in manifest.skipped if not s.harmless]
    if cfg.strict and refused:
        raise StrictError(refused[0].strict_message())
    if not manifest.cases:
        raise UserError(f"--input {cfg.input}: no usable case found "
                        f"({len(manifest.skipped)} rows skipped)")
    listed = [r for c in manifest.cases for r in c.images]
    if all(r.missing or not fileio.exists(r.path) for r in listed):
        raise UserError(f"--input {cfg.input}: none of the {len(listed)} listed images was "
                        f"found (e.g. {listed[0].path or listed[0].image_id}); check --input "
                        "and --images")
    plan = make_plan(manifest, fractions, cfg.split_seed, cfg.shard_mb)
    for name, sp in plan.splits.items():
        log.info("split %s: %d cases, %d shard(s)", name, len(sp.cases),
                 sp.num_shards if sp.cases else 0)

    created_out = not fileio.exists(cfg.out)
    staging = writer.make_staging(cfg.out)
    try:
        if cfg.runner == "beam":
            from data_prep.beam_runner import run_beam
            result = run_beam(plan, staging, cfg.image_options, list(cfg.beam_args))
            if cfg.strict and result.skipped:
                raise StrictError(result.skipped[0].strict_message())
        else:
            result = run_local(plan, staging, cfg.image_options, cfg.workers, cfg.strict,
                               progress)
        if not result.cases:
            skipped = list(manifest.skipped) + list(result.skipped)
            raise UserError(f"--input {cfg.input}: no image could be used ({len(skipped)} "
                            f"skipped: {skip_reasons(skipped)}; e.g. "
                            f"{skipped[0].strict_message()[len('--strict: '):]})")
        info = finish(cfg, manifest, plan, result, staging, fractions, label_fractions,
                      duplicates.as_dict(), near)
        writer.publish(staging, cfg.out)
    except BaseException:
        writer.discard(staging)
        if created_out:
            fileio.rmdir_if_empty(cfg.out)
        raise
    n_img = sum(s["images"] for s in info["splits"].values())
    log.info("wrote %d cases, %d images to %s in %.1fs; skipped %d (%s)%s",
             sum(s["cases"] for s in info["splits"].values()), n_img, cfg.out,
             time.time() - t0, info["skipped"],
             ", ".join(f"{k} {v}" for k, v in info["skipped_reasons"].items()) or "none",
             f": see {fileio.join(cfg.out, writer.SKIPPED_CSV)}" if info["skipped"] else "")
    return info


def _labeled(c) -> bool:
    if c.label_multi is not None:
        return any(v == v for v in c.label_multi)        # any non-NaN value
    return c.label_class >= 0


def check_out_not_in_input(input_path: str, out: str) -> None:
    """Refuses an output folder that is the input folder or inside it: a later run would
    read the records (or a staging folder) as input, and --overwrite could delete
    source files."""
    src = fileio.realpath(input_path)
    dst = fileio.realpath(out)
    sep = "/" if fileio.is_url(src) else os.sep
    if fileio.isdir(src) and (dst == src or dst.startswith(src.rstrip(sep) + sep)):
        raise UserError(f"--out {out}: is inside --input {input_path}; write the records "
                        "outside the source folder")


def finish(cfg: ConvertConfig, manifest: Manifest, plan: Plan, result: RunResult,
           staging: str, fractions: dict[str, float], label_fractions: list[float],
           duplicates: dict | None = None, near_duplicates: dict | None = None) -> dict:
    """Writes subsets, skipped.csv and dataset.json into the staging folder."""
    from tfmicle.data.records import DATASET_JSON, SCHEMA_VERSION, subset_path

    by_split = defaultdict(list)
    for c in result.cases:
        by_split[c.split].append(c)
    skipped = list(manifest.skipped) + list(result.skipped)
    shard_files = sorted(f for f in fileio.listdir(staging) if f.endswith(".tfrecord"))
    splits = {}
    for name, sp in plan.splits.items():
        stats = split_stats(by_split.get(name, []), manifest.task, manifest.class_names)
        stats["shards"] = [f for f in shard_files if f.startswith(name + "-")
                           and f[len(name) + 1:].split("-of-")[0].isdigit()]
        splits[name] = stats
        if not by_split.get(name) and name in fractions:
            log.warning("split %s has no case (too few patients for fraction %g)",
                        name, fractions[name])
    subsets = {}
    for name in cfg.subset_splits:
        if name not in by_split:
            continue
        subs = make_subsets(by_split[name], label_fractions, cfg.split_seed, manifest.task)
        labeled = len(subs.get(1.0, [])) if 1.0 in subs else sum(
            1 for c in by_split[name] if _labeled(c))
        subsets[name] = {}
        for f, ids in subs.items():
            path = subset_path(staging, name, f)
            writer.write_text_atomic(path, "".join(i + "\n" for i in ids))
            real = len(ids) / max(labeled, 1)
            subsets[name][f"{f:g}"] = {"cases": len(ids), "fraction": round(real, 6),
                                       "file": fileio.relpath(path, staging)}
            # each class keeps at least one case, so small data overshoot small fractions
            (log.warning if real > 1.5 * f else log.info)(
                "subset %s %g%%: %d of %d labeled cases = %.2f%% of the split", name,
                f * 100, len(ids), labeled, real * 100)
    writer.write_text_atomic(fileio.join(staging, writer.SKIPPED_CSV), skipped_csv(skipped))
    primary = manifest.sources[0] if manifest.sources else None
    info = {
        "schema_version": SCHEMA_VERSION,
        "task": manifest.task,
        "class_names": manifest.class_names,
        "metadata_columns": manifest.metadata_columns,   # schema v2: image/meta columns
        "splits": splits,
        "source": {
            "format": manifest.format,
            "input": fileio.abspath(cfg.input),
            "manifest": primary.path if primary else None,
            "sha256": primary.sha256 if primary else None,
            "files": [{"path": s.path, "sha256": s.sha256} for s in manifest.sources],
        },
        "split_seed": cfg.split_seed,
        "split_fractions": fractions,
        "label_fractions": label_fractions,
        "subsets": subsets,
        "skipped": len(skipped),
        "skipped_reasons": skip_reasons(skipped),
        "duplicates": duplicates or {},
        "near_duplicates": near_duplicates or {},   # schema v3: image/near_pairs
        "images": {"max_side": cfg.image_options.max_side,
                   "jpeg_quality": cfg.image_options.jpeg_quality},
        "runner": cfg.runner,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    writer.write_text_atomic(fileio.join(staging, DATASET_JSON),
                             json.dumps(info, indent=2, sort_keys=False) + "\n")
    return info
