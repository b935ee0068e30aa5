"""Readers of the source layouts: each turns its input into a :class:`Manifest`
(data_prep.manifest). The generic layouts (csv, folders) are here, the public
datasets' own layouts in data_prep.datasets. To add a dataset format, write a reader
and register it in read_manifest (and data_prep.FORMATS); see docs/architecture.md.

A manifest lists the cases (grouped images, labels, patient, source split) and the
rows that cannot become part of one (bad label, conflict, duplicate) as skips. It
reads metadata and lists folders; it opens no image.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re

from data_prep.cases import UNLABELED, ImageRef, Skip
from data_prep.datasets import read_chexpert, read_ham10000, read_isic2019, read_isic2020
from data_prep.errors import UserError
from data_prep.manifest import (CaseGrouper, FormatOptions, Manifest, SourceFile, probe_size,
                                require_columns, row_meta, sha256_file, sort_class_names,
                                walk_images)
from tfmicle import fileio
from tfmicle.csvfiles import parse_multi_value, read_csv
from tfmicle.tasks import MULTICLASS, MULTILABEL

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- formats

def read_manifest(fmt: str, input_path: str, opts: FormatOptions) -> Manifest:
    readers = {"csv": read_csv_manifest, "folders": read_folders, "ham10000": read_ham10000,
               "isic2019": read_isic2019, "isic2020": read_isic2020, "chexpert": read_chexpert}
    if fmt not in readers:
        raise UserError(f"unknown format {fmt!r} (one of {', '.join(readers)})")
    if not fileio.exists(input_path):
        raise UserError(f"--input {input_path}: not found")
    m = readers[fmt](input_path, opts)
    log.info("%s: %d cases, %d images listed, %d rows skipped", fmt, len(m.cases),
             m.num_images, len(m.skipped))
    return m


def read_csv_manifest(path: str, opts: FormatOptions) -> Manifest:
    """Generic manifest: image path, case id, [patient id], [view], [split], label(s)."""
    if fileio.isdir(path):
        raise UserError(f"--input {path}: is a folder; the csv format takes the manifest file "
                        "(images under --images)")
    header, rows = read_csv(path)
    cols = opts.columns
    root = opts.images or fileio.dirname(fileio.abspath(path))
    if not fileio.isdir(root):
        raise UserError(f"--images {root}: not a folder")

    def pick(given: str | None, default: str, required: bool = False) -> str | None:
        if given is not None:
            if given == "":
                return None
            require_columns(path, header, [given])
            return given
        if default in header:
            return default
        if required:
            raise UserError(f"{path}: no {default!r} column (set it with --{default.replace('_', '-')}"
                            f"-col); has {', '.join(header)}")
        return None

    image_col = pick(cols.image, "image", required=True)
    case_col = pick(cols.case, "case_id")
    patient_col = pick(cols.patient, "patient_id")
    view_col = pick(cols.view, "view")
    split_col = pick(cols.split, "split")
    multi_cols = cols.labels
    meta_cols = list(cols.meta or [])
    require_columns(path, header, meta_cols)
    if multi_cols:
        require_columns(path, header, multi_cols)
        label_col = None
    else:
        label_col = pick(cols.label, "label")
    if case_col is None:
        log.info("%s: no case column: each image is its own case", path)

    if multi_cols:
        task, class_names = MULTILABEL, list(multi_cols)
    else:
        task = MULTICLASS
        present = (sort_class_names({r[label_col] for r in rows if r.get(label_col)})
                   if label_col else [])
        if opts.class_names:
            class_names = list(opts.class_names)
            unknown = [c for c in present if c not in class_names]
            if unknown:
                log.warning("labels not in --class-names are skipped: %s", ", ".join(unknown[:10]))
        else:
            class_names = present
        if label_col is None:
            log.warning("%s: no label column: every case is unlabeled", path)
    index = {c: i for i, c in enumerate(class_names)}

    g = CaseGrouper()
    for n, r in enumerate(rows, start=2):
        where = f"{os.path.basename(path)} line {n}"
        rel = r.get(image_col, "")
        if not rel:
            g.skipped.append(Skip("", f"bad row: {where}: empty {image_col!r}"))
            continue
        full = rel if fileio.isabs(rel) else fileio.join(root, rel)
        case_id = (r.get(case_col, "") if case_col else "") or rel
        patient = (r.get(patient_col, "") if patient_col else "") or case_id
        view = r.get(view_col, "") if view_col else ""
        split = (r.get(split_col, "") if split_col else "") or None
        ref = ImageRef(full, rel, view, meta=row_meta(r, meta_cols))
        label_class, label_multi = UNLABELED, None
        if multi_cols:
            try:
                label_multi = [parse_multi_value(r.get(c, "")) for c in multi_cols]
            except ValueError as e:
                g.skipped.append(Skip(full, f"bad label: {where}: {e!s} (expected 1, 0, -1 "
                                            "or blank)", rel, case_id))
                continue
        elif label_col and r.get(label_col, ""):
            if r[label_col] not in index:
                g.skipped.append(Skip(full, f"bad label: {where}: {r[label_col]!r} not in "
                                            "--class-names", rel, case_id))
                continue
            label_class = index[r[label_col]]
        g.add(case_id, patient, ref, where, label_class, label_multi, split)
    cases, skipped = g.result()
    return Manifest("csv", task, class_names, cases, skipped,
                    [SourceFile(fileio.abspath(path), sha256_file(path))])


def known_layout(root: str) -> tuple[str, str] | None:
    """(format, the file or folder that shows it) when ``root`` is the download of a
    dataset that has its own reader; the folders format would turn its image folders
    (``HAM10000_images_part_1``, ``train``) into classes."""
    def has(name: str) -> bool:
        return fileio.exists(fileio.join(root, name))

    def header(name: str) -> list[str]:
        try:
            with fileio.open(fileio.join(root, name), "rb") as f:
                first = f.readline().decode("utf-8-sig")
            return [h.strip() for h in first.replace(";", ",").replace("\t", ",").split(",")]
        except (OSError, UnicodeDecodeError):
            return []

    for name in ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_images_part_1",
                 "HAM10000_images_part_2"):
        if has(name):
            return "ham10000", name
    if has("ISIC_2019_Training_GroundTruth.csv"):
        return "isic2019", "ISIC_2019_Training_GroundTruth.csv"
    for name in ("ISIC_2020_Training_GroundTruth.csv", "ISIC_2020_Training_GroundTruth_v2.csv"):
        if has(name):
            return "isic2020", name
    for name in ("train.csv", "valid.csv"):
        cols = header(name)
        if "Path" in cols and "Frontal/Lateral" in cols:
            return "chexpert", name
        if "image_name" in cols and "patient_id" in cols:
            return "isic2020", name
    return None


def read_folders(root: str, opts: FormatOptions) -> Manifest:
    """``root/<class>/<image>``; ``root/<unlabeled dir>/...`` and images in root are unlabeled."""
    if not fileio.isdir(root):
        raise UserError(f"--input {root}: not a folder")
    layout = known_layout(root)
    if layout:
        raise UserError(f"--input {root}: holds {layout[1]}, a {layout[0]} download; the "
                        f"folders format would make its folders classes: use --format "
                        f"{layout[0]}")
    regex = None
    if opts.case_regex:
        try:
            regex = re.compile(opts.case_regex)
        except re.error as e:
            raise UserError(f"--case-regex {opts.case_regex!r}: {e}") from None
    excl = {fileio.realpath(e) for e in opts.exclude}
    subdirs = sorted(d for d in fileio.listdir(root) if not d.startswith(".")
                     and fileio.isdir(fileio.join(root, d))
                     and fileio.realpath(fileio.join(root, d)) not in excl)
    found = [d for d in subdirs if d not in opts.unlabeled_dirs]
    if opts.class_names:
        class_names = list(opts.class_names)
        extra = [d for d in found if d not in class_names]
        if extra:
            raise UserError(f"folders {', '.join(extra)} are not in --class-names")
    else:
        class_names = sort_class_names(found)
    index = {c: i for i, c in enumerate(class_names)}

    g = CaseGrouper()
    listing = hashlib.sha256()
    unmatched = 0
    for path in walk_images(root, opts.exclude, g.skipped):
        rel = fileio.relpath(path, root).replace(os.sep, "/")
        listing.update(f"{rel}\t{probe_size(path)}\n".encode())
        top = rel.split("/", 1)[0] if "/" in rel else ""
        label = index.get(top, UNLABELED)
        case_id, patient = rel, None
        if regex:
            m = regex.search(os.path.basename(rel))
            if m:
                gd = m.groupdict()
                case_id = gd.get("case") or (m.group(1) if m.groups() else m.group(0))
                patient = gd.get("patient")
            else:
                unmatched += 1
        g.add(case_id, patient or case_id, ImageRef(path, rel), rel, label)
    if unmatched:
        log.info("--case-regex matched no case in %d file names: those images are cases "
                 "of their own", unmatched)
    cases, skipped = g.result()
    return Manifest("folders", MULTICLASS, class_names, cases, skipped,
                    [SourceFile(fileio.abspath(root), listing.hexdigest())])
