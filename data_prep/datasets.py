"""Readers of the public datasets' own layouts (HAM10000, ISIC 2019, ISIC 2020,
CheXpert): each turns the download as distributed into a :class:`Manifest`
(data_prep.manifest); data_prep.formats.read_manifest picks one by --format.
Map: docs/architecture.md.
"""
from __future__ import annotations

import logging
import os

from data_prep.cases import UNLABELED, ImageRef, Skip
from data_prep.errors import UserError
from data_prep.manifest import (CaseGrouper, FormatOptions, Manifest, SourceFile, StemIndex,
                                first_existing, missing_ref, require_columns, row_meta,
                                sha256_file, sort_class_names)
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
