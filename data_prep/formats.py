"""Readers of the source layouts: each turns its input into a :class:`Manifest`
(data_prep.manifest). To add a dataset format, write a reader here and register it in
read_manifest (and data_prep.FORMATS); see docs/architecture.md.

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
from data_prep.errors import UserError
from data_prep.manifest import (CaseGrouper, FormatOptions, Manifest, SourceFile, StemIndex,
                                first_existing, missing_ref, probe_size, require_columns,
                                row_meta, sha256_file, sort_class_names, walk_images)
from tfmicle import fileio
from tfmicle.csvfiles import parse_multi_value, read_csv
from tfmicle.tasks import MULTICLASS, MULTILABEL

log = logging.getLogger(__name__)

HAM10000_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
ISIC2019_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
ISIC2020_TARGET_CLASSES = ["benign", "malignant"]
# Patient / acquisition metadata kept per image (schema v2), when the CSV has the column.
HAM10000_META = ["sex", "age", "localization"]
ISIC2020_META = ["sex", "age_approx", "anatom_site_general_challenge"]
CHEXPERT_META = ["Sex", "Age", "Frontal/Lateral", "AP/PA"]
CHEXPERT_CLASSES = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
    "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
    "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]


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


def read_ham10000(folder: str, opts: FormatOptions) -> Manifest:
    """HAM10000_metadata.csv (lesion_id, image_id, dx, ...) + image folders; case = lesion."""
    meta = first_existing(folder, ["HAM10000_metadata.csv", "HAM10000_metadata.tab",
                                    "HAM10000_metadata"]) if fileio.isdir(folder) else None
    if meta is None:
        raise UserError(f"--input {folder}: no HAM10000_metadata.csv in this folder")
    header, rows = read_csv(meta)
    require_columns(meta, header, ["lesion_id", "image_id", "dx"])
    index = {c: i for i, c in enumerate(HAM10000_CLASSES)}
    files = StemIndex(folder, opts.exclude)
    g = CaseGrouper()
    for n, r in enumerate(rows, start=2):
        where = f"{os.path.basename(meta)} line {n}"
        image_id = r["image_id"]
        lesion = r["lesion_id"] or image_id
        if r["dx"] not in index:
            g.skipped.append(Skip(image_id, f"bad label: {where}: dx {r['dx']!r} is not one of "
                                            f"{', '.join(HAM10000_CLASSES)}", image_id, lesion))
            continue
        path = files.find(image_id)
        ref = ImageRef(path, image_id) if path else missing_ref(image_id, f"under {folder}")
        ref.meta = row_meta(r, HAM10000_META)
        g.add(lesion, lesion, ref, where, index[r["dx"]])
    files.log_unused()
    cases, skipped = g.result()
    return Manifest("ham10000", MULTICLASS, list(HAM10000_CLASSES), cases, skipped,
                    [SourceFile(fileio.abspath(meta), sha256_file(meta))])


def read_isic2019(folder: str, opts: FormatOptions) -> Manifest:
    """ISIC_2019_Training_GroundTruth.csv (one-hot) + ISIC_2019_Training_Metadata.csv
    (lesion_id; empty: the image is its own case)."""
    if not fileio.isdir(folder):
        raise UserError(f"--input {folder}: not a folder")
    gt = first_existing(folder, ["ISIC_2019_Training_GroundTruth.csv"])
    if gt is None:
        raise UserError(f"--input {folder}: no ISIC_2019_Training_GroundTruth.csv in this folder")
    header, rows = read_csv(gt)
    require_columns(gt, header, ["image"] + ISIC2019_CLASSES[:-1])
    classes = [c for c in ISIC2019_CLASSES if c in header]
    sources = [SourceFile(fileio.abspath(gt), sha256_file(gt))]
    lesions: dict[str, str] = {}
    meta = first_existing(folder, ["ISIC_2019_Training_Metadata.csv"])
    if meta:
        mh, mrows = read_csv(meta)
        require_columns(meta, mh, ["image", "lesion_id"])
        lesions = {r["image"]: r["lesion_id"] for r in mrows}
        sources.append(SourceFile(fileio.abspath(meta), sha256_file(meta)))
    else:
        log.warning("no ISIC_2019_Training_Metadata.csv: each image is its own case "
                    "(lesions cannot be kept together)")
    files = StemIndex(folder, opts.exclude)
    g = CaseGrouper()
    for n, r in enumerate(rows, start=2):
        where = f"{os.path.basename(gt)} line {n}"
        image_id = r["image"]
        case_id = lesions.get(image_id) or image_id
        try:
            onehot = [float(r.get(c) or 0) for c in classes]
        except ValueError:
            onehot = []
        hot = [i for i, v in enumerate(onehot) if v == 1.0]
        if len(hot) != 1 or any(v not in (0.0, 1.0) for v in onehot):
            g.skipped.append(Skip(image_id, f"bad label: {where}: not one-hot over "
                                            f"{', '.join(classes)}", image_id, case_id))
            continue
        path = files.find(image_id)
        ref = ImageRef(path, image_id) if path else missing_ref(image_id, f"under {folder}")
        g.add(case_id, case_id, ref, where, hot[0])
    files.log_unused()
    cases, skipped = g.result()
    return Manifest("isic2019", MULTICLASS, classes, cases, skipped, sources)


def read_isic2020(folder: str, opts: FormatOptions) -> Manifest:
    """train.csv (image_name, patient_id, ..., diagnosis, benign_malignant, target).

    Case = patient. A patient whose images carry different labels gets one case per
    label (``<patient>:<class>``), so that every case has one label; the patient id
    stays the same and keeps them in one split.
    """
    if not fileio.isdir(folder):
        raise UserError(f"--input {folder}: not a folder")
    meta = first_existing(folder, ["train.csv", "ISIC_2020_Training_GroundTruth_v2.csv",
                                    "ISIC_2020_Training_GroundTruth.csv"])
    if meta is None:
        raise UserError(f"--input {folder}: no train.csv (or ISIC_2020_Training_GroundTruth.csv)")
    header, rows = read_csv(meta)
    if opts.isic2020_label not in ("target", "diagnosis"):
        raise UserError(f"--isic2020-label {opts.isic2020_label!r}: use target or diagnosis")
    label_col = opts.isic2020_label
    require_columns(meta, header, ["image_name", "patient_id", label_col])
    if label_col == "target":
        classes = list(ISIC2020_TARGET_CLASSES)
        to_index = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
    else:
        classes = list(opts.class_names or sort_class_names({r["diagnosis"] for r in rows
                                                             if r["diagnosis"]}))
        to_index = {c: i for i, c in enumerate(classes)}
    files = StemIndex(folder, opts.exclude)
    labelled: list[tuple[str, str, int, ImageRef]] = []
    skipped: list[Skip] = []
    per_patient: dict[str, set[int]] = {}
    for n, r in enumerate(rows, start=2):
        where = f"{os.path.basename(meta)} line {n}"
        image_id, patient = r["image_name"], r["patient_id"] or r["image_name"]
        if r[label_col] not in to_index:
            skipped.append(Skip(image_id, f"bad label: {where}: {label_col} {r[label_col]!r}",
                                image_id, patient))
            continue
        label = to_index[r[label_col]]
        path = files.find(image_id)
        ref = ImageRef(path, image_id) if path else missing_ref(image_id, f"under {folder}")
        ref.meta = row_meta(r, ISIC2020_META)
        labelled.append((patient, where, label, ref))
        per_patient.setdefault(patient, set()).add(label)
    g = CaseGrouper()
    g.skipped = skipped
    for patient, where, label, ref in labelled:
        if len(per_patient[patient]) > 1:
            case_id = f"{patient}:{classes[label]}"
        else:
            case_id = patient
        g.add(case_id, patient, ref, where, label)
    mixed = sum(1 for v in per_patient.values() if len(v) > 1)
    if mixed:
        log.info("%d patients have images of several labels: one case per patient and label",
                 mixed)
    files.log_unused()
    cases, skipped = g.result()
    return Manifest("isic2020", MULTICLASS, classes, cases, skipped,
                    [SourceFile(fileio.abspath(meta), sha256_file(meta))])


def read_chexpert(folder: str, opts: FormatOptions) -> Manifest:
    """``CheXpert-v1.0-small``: train.csv / valid.csv; case = patient/study (all views),
    14 observations in label/multi (1, 0, -1 uncertain, NaN blank); valid kept as 'valid'."""
    if not fileio.isdir(folder):
        raise UserError(f"--input {folder}: not a folder (give the CheXpert-v1.0-small folder)")
    csvs = [(name, split) for name, split in (("train.csv", None), ("valid.csv", "valid"))
            if fileio.isfile(fileio.join(folder, name))]
    if not csvs:
        raise UserError(f"--input {folder}: no train.csv or valid.csv (give the "
                        "CheXpert-v1.0-small folder)")
    g = CaseGrouper()
    sources = []
    for name, split in csvs:
        path = fileio.join(folder, name)
        header, rows = read_csv(path)
        require_columns(path, header, ["Path"] + CHEXPERT_CLASSES)
        sources.append(SourceFile(fileio.abspath(path), sha256_file(path)))
        for n, r in enumerate(rows, start=2):
            where = f"{name} line {n}"
            rel = r["Path"].replace("\\", "/")
            parts = rel.split("/")
            # Path starts with the dataset folder's own name: CheXpert-v1.0-small/train/...
            inner = "/".join(parts[1:]) if len(parts) > 1 and parts[0] not in (
                "train", "valid", "test") else rel
            ip = inner.split("/")
            pi = next((i for i, p in enumerate(ip) if p.startswith("patient")), None)
            if pi is None or pi + 1 >= len(ip) - 1:
                g.skipped.append(Skip(rel, f"bad row: {where}: Path is not "
                                           ".../patientNNNNN/studyN/<view>.jpg", rel))
                continue
            patient, study = ip[pi], ip[pi + 1]
            case_id = f"{patient}/{study}"
            view = r.get("Frontal/Lateral", "").lower()
            try:
                labels = [parse_multi_value(r[c]) for c in CHEXPERT_CLASSES]
            except ValueError as e:
                g.skipped.append(Skip(rel, f"bad label: {where}: {e!s}", rel, case_id))
                continue
            full = fileio.join(folder, *ip)
            ref = ImageRef(full, rel, view, meta=row_meta(r, CHEXPERT_META))
            g.add(case_id, patient, ref, where, UNLABELED, labels, split)
    cases, skipped = g.result()
    return Manifest("chexpert", MULTILABEL, list(CHEXPERT_CLASSES), cases, skipped, sources)
