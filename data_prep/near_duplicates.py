"""Near-identical photos of one case: one photograph with other colour processing or
crop, listed by the user (``--near-duplicates pairs.csv``; HAM10000 ships such a list
beside its metadata in some copies). MICLe needs to know them: a "pair of different
photos" that is one photo re-processed is a SimCLR pair in disguise.

The pairs group the images of a case into photos (connected components); each image
keeps its record and gets the photo group written to ``image/photo`` (records schema
v3). Nothing is dropped, so supervised training and scoring see every image.
"""
from __future__ import annotations

import logging

from data_prep.errors import UserError
from data_prep.manifest import Manifest, read_csv, require_columns
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
    """Sets ImageRef.photo for every image of a listed pair within one case: the
    smallest image id of its connected component. Pairs whose images are in different
    cases (or not in the manifest) are counted, not applied. Returns the counts for
    dataset.json: pairs, applied, images_grouped, photos (the groups of 2 or more)."""
    where = {}
    for c in manifest.cases:
        for r in c.images:
            where[r.image_id] = c.case_id
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    applied = 0
    for a, b in pairs:
        if a == b or where.get(a) is None or where.get(a) != where.get(b):
            continue
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        applied += 1
    members: dict[str, list[str]] = {}
    for x in list(parent):
        members.setdefault(root(x), []).append(x)
    photo = {x: min(group) for group in members.values() for x in group}
    grouped = 0
    for c in manifest.cases:
        for r in c.images:
            if r.image_id in photo:
                r.photo = photo[r.image_id]
                grouped += 1
    if len(pairs) > applied:
        log.warning("near-duplicate pairs: %d of %d not applied (images missing or in "
                    "different cases)", len(pairs) - applied, len(pairs))
    return {"pairs": len(pairs), "applied": applied, "images_grouped": grouped,
            "photos": len(members)}


def group_near_duplicates(manifest: Manifest, fmt: str, input_path: str,
                          pairs_file: str | None) -> dict:
    """Reads the pairs file (given, else the format's default) and applies it; {} when
    there is none."""
    path = pairs_file or default_pairs_file(fmt, input_path)
    if not path:
        return {}
    stats = apply_pairs(manifest, read_pairs(path))
    log.info("near-duplicate photos from %s: %d pairs, %d images in %d groups of one "
             "photograph", path, stats["applied"], stats["images_grouped"], stats["photos"])
    return {"file": fileio.abspath(path), **stats}
