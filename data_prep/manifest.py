"""What every dataset format reader (data_prep.formats) produces and shares: the
Manifest (cases, skipped rows, source files), the reader options, and the helpers to
find image files by id and group rows into cases. Reading the CSVs themselves
(read_csv, parse_multi_value) is tfmicle.csvfiles', shared with tfmicle.score.
Map: docs/architecture.md.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable

from data_prep.cases import UNLABELED, CaseSpec, ImageRef, Skip
from data_prep.errors import UserError
from tfmicle import fileio
from tfmicle.imagefiles import is_image_file

log = logging.getLogger(__name__)

# Preferred file when one image id has several files (e.g. ISIC 2020 jpeg/ and DICOM).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")
_EXT_RANK = {e: i for i, e in enumerate((".jpg", ".jpeg", ".png", ".dcm", ".dicom",
                                         ".tif", ".tiff", ".bmp"))}


@dataclass
class SourceFile:
    path: str
    sha256: str


@dataclass
class Manifest:
    format: str
    task: str                       # "multiclass" | "multilabel"
    class_names: list[str]
    cases: list[CaseSpec]
    skipped: list[Skip] = field(default_factory=list)
    sources: list[SourceFile] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return sum(len(c.images) for c in self.cases)

    @property
    def metadata_columns(self) -> list[str]:
        """Metadata columns kept in the records (union over cases, first-seen order)."""
        return list(dict.fromkeys(k for c in self.cases for k in c.meta_keys))


@dataclass
class CsvColumns:
    """Column names of the generic csv format (None: use the default if present)."""
    image: str | None = None          # default "image"
    case: str | None = None           # default "case_id"; absent: each image is a case
    patient: str | None = None        # default "patient_id"
    view: str | None = None           # default "view"
    split: str | None = None          # default "split"
    label: str | None = None          # default "label" (multi-class, class names as text)
    labels: list[str] | None = None   # several columns: multi-label 1/0/-1/blank
    meta: list[str] | None = None     # metadata columns kept per image (schema v2)


@dataclass
class FormatOptions:
    images: str | None = None               # csv: image root (default: the manifest's folder)
    columns: CsvColumns = field(default_factory=CsvColumns)
    class_names: list[str] | None = None    # csv/folders/isic2020-diagnosis: class order
    case_regex: str | None = None           # folders
    unlabeled_dirs: tuple[str, ...] = ("unlabeled",)   # folders
    isic2020_label: str = "target"          # "target" | "diagnosis"
    exclude: tuple[str, ...] = ()           # folders never walked (the output folder)


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Class names in their default order: by value when every name is a number
    ("2" before "10"), as text otherwise."""
    names = list(names)
    if names and all(_NUMBER.fullmatch(n) for n in names):
        return sorted(names, key=lambda n: (float(n), n))
    return sorted(names)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with fileio.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()



def probe_size(path: str) -> int:
    """File size in bytes, 0 when it cannot be stat'ed (the image is reported later)."""
    try:
        return fileio.getsize(path)
    except OSError:
        return 0


def require_columns(path: str, header: list[str], cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                        f"has {', '.join(header)}")


def row_meta(row: dict[str, str], columns: Iterable[str]) -> dict[str, str]:
    """The metadata a reader keeps of one row: the given columns the CSV has, as text."""
    return {c: row[c] for c in columns if c in row}


def first_existing(folder: str, names: Iterable[str]) -> str | None:
    for n in names:
        p = fileio.join(folder, n)
        if fileio.isfile(p):
            return p
    return None


def walk_images(root: str, exclude: Iterable[str] = (),
                others: list[Skip] | None = None) -> Iterable[str]:
    """All image files under root (sorted; hidden entries and excluded folders skipped;
    a symlinked folder is walked once).

    When ``others`` is given, every entry under root that is not yielded is appended to
    it as a Skip with the reason, so that nothing under root is lost silently: files
    of other types, hidden files and folders, dangling symlinks, folders reached a
    second time through a symlink. Excluded folders (the output) are not listed.
    """
    excl = {fileio.realpath(e) for e in exclude}
    seen = {fileio.realpath(root): root}       # symlinked folders are followed once
    url = fileio.is_url(root)

    def other(path: str, reason: str) -> None:
        if others is not None:
            rel = fileio.relpath(path, root).replace(os.sep, "/")
            others.append(Skip(path, reason, rel))

    for dirpath, dirnames, filenames in fileio.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            path = fileio.join(dirpath, d)
            real = fileio.realpath(path)
            if real in excl:
                continue
            if d.startswith("."):
                other(path, "not read: hidden folder")
            elif real in seen:
                other(path, f"duplicate: folder already read as {seen[real]}")
            else:
                seen[real] = path
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = fileio.join(dirpath, name)
            if name.startswith("."):
                other(path, "not read: hidden file")
            elif not url and not os.path.exists(path):
                other(path, f"missing: dangling symlink to {os.readlink(path)}")
            elif not is_image_file(name):
                ext = os.path.splitext(name)[1].lower() or "(none)"
                other(path, f"unsupported: file type {ext} is not an image type data_prep "
                            "reads")
            else:
                yield path


class StemIndex:
    """Finds an image file by id (file name without extension) anywhere under a folder."""

    def __init__(self, root: str, exclude: Iterable[str] = ()):
        self.root = root
        self._by_stem: dict[str, list[str]] = {}
        for path in walk_images(root, exclude):
            stem, _ = os.path.splitext(os.path.basename(path))
            self._by_stem.setdefault(stem, []).append(path)
        self._used: set[str] = set()
        log.info("found %d image files under %s", self.num_files, root)

    @property
    def num_files(self) -> int:
        return sum(len(v) for v in self._by_stem.values())

    def find(self, image_id: str) -> str | None:
        stem, ext = os.path.splitext(image_id)
        cands = self._by_stem.get(image_id) or (
            self._by_stem.get(stem) if ext.lower() in _EXT_RANK else None)
        if not cands:
            return None
        best = min(cands, key=lambda p: (_EXT_RANK.get(os.path.splitext(p)[1].lower(), 99), p))
        self._used.add(image_id if image_id in self._by_stem else stem)
        return best

    def log_unused(self) -> None:
        unused = sum(len(v) for k, v in self._by_stem.items() if k not in self._used)
        if unused:
            log.info("%d image files under %s are not listed in the metadata and are not "
                     "part of the dataset", unused, self.root)


class CaseGrouper:
    """Groups rows into cases in source order; a row that contradicts its case (other
    label, patient or source split) is skipped with a reason. Repeated images (the same
    file or the same bytes, also across cases) are data_prep.duplicates' job."""

    def __init__(self):
        self.cases: dict[str, CaseSpec] = {}
        self.skipped: list[Skip] = []

    def add(self, case_id: str, patient_id: str, image: ImageRef, where: str,
            label_class: int = UNLABELED, label_multi: list[float] | None = None,
            source_split: str | None = None) -> None:
        case = self.cases.get(case_id)
        if case is None:
            self.cases[case_id] = CaseSpec(case_id, patient_id or case_id, [image], label_class,
                                           label_multi, source_split)
            return
        problem = None
        if (patient_id or case_id) != case.patient_id:
            problem = f"patient {patient_id!r} differs from {case.patient_id!r}"
        elif label_class != case.label_class or not same_multi(label_multi, case.label_multi):
            problem = "label differs from the case's earlier rows"
        elif source_split != case.source_split:
            problem = f"split {source_split!r} differs from {case.source_split!r}"
        if problem:
            self.skipped.append(Skip(image.path or image.image_id,
                                     f"conflict: {where}: case {case_id!r}: {problem}",
                                     image.image_id, case_id))
            return
        case.images.append(image)

    def result(self) -> tuple[list[CaseSpec], list[Skip]]:
        return list(self.cases.values()), self.skipped


def same_multi(a: list[float] | None, b: list[float] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b))



def missing_ref(image_id: str, where: str, view: str = "") -> ImageRef:
    return ImageRef("", image_id, view, missing=f"missing: no image file for {image_id!r} {where}")

