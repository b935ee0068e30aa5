"""Near-identical photos of one case: one photograph with other colour processing or
crop, listed by the user (``--near-duplicates pairs.csv``; HAM10000 copies may ship
such a list beside their metadata). MICLe needs to know them: a "pair of different
photos" that is one photo re-processed is a SimCLR pair in disguise.

Each listed pair within one case is kept on the case (``CaseSpec.near_pairs``) and
written to the record as image indices (``image/near_pairs``, records schema v3). The
relation is not made transitive: when a ~ b and b ~ c are listed, a and c stay a valid
MICLe pair. Nothing is dropped, so supervised training and scoring see every image.
"""
from __future__ import annotations

import logging

from data_prep.errors import UserError
from data_prep.manifest import Manifest, require_columns
from tfmicle.csvfiles import read_csv
from tfmicle import fileio

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("image_a", "image_b")
HAM10000_PAIRS = "near_duplicate_pairs.csv"   # the file name the shared HAM10000 copy uses


def default_pairs_file(fmt: str, input_path: str) -> str | None:
    """The pairs file data_prep reads without --near-duplicates: HAM10000's
    near_duplicate_pairs.csv beside its metadata, when there; else None."""
    if fmt != "ham10000" or not fileio.isdir(input_path):
        return None
    path = fileio.join(input_path, HAM10000_PAIRS)
    return path if fileio.isfile(path) else None


def read_pairs(path: str) -> list[tuple[str, str]]:
    """(image_a, image_b) image ids of a pairs CSV; UserError when it is not one."""
    if not fileio.isfile(path):
        raise UserError(f"--near-duplicates {path}: file not found")
    header, rows = read_csv(path)
    require_columns(path, header, list(PAIR_COLUMNS))
    return [(r["image_a"], r["image_b"]) for r in rows if r["image_a"] and r["image_b"]]


def apply_pairs(manifest: Manifest, pairs: list[tuple[str, str]]) -> dict:
    """Adds each pair whose two images are in one case to that case's near_pairs.
    Pairs across cases, or naming an image the manifest lacks, are counted and left out.
    Returns the counts for dataset.json: pairs, applied, cases."""
    cases = {}
    for c in manifest.cases:
        for r in c.images:
            cases[r.image_id] = c
    applied, touched = 0, set()
    for a, b in pairs:
        c = cases.get(a)
        if a == b or c is None or cases.get(b) is not c:
            continue
        c.near_pairs.append((a, b))
        touched.add(c.case_id)
        applied += 1
    if len(pairs) > applied:
        log.warning("near-duplicate pairs: %d of %d not applied (images missing or in "
                    "different cases)", len(pairs) - applied, len(pairs))
    return {"pairs": len(pairs), "applied": applied, "cases": len(touched)}


def group_near_duplicates(manifest: Manifest, fmt: str, input_path: str,
                          pairs_file: str | None) -> dict:
    """Reads the pairs file (given, else the format's default) and applies it; {} when
    there is none."""
    path = pairs_file or default_pairs_file(fmt, input_path)
    if not path:
        return {}
    stats = apply_pairs(manifest, read_pairs(path))
    log.info("near-identical photo pairs from %s: %d pairs in %d cases", path,
             stats["applied"], stats["cases"])
    return {"file": fileio.abspath(path), **stats}
