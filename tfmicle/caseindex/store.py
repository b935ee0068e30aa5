"""The case-index folder: one owner for what the index tool writes and what serving and
scoring read, as ``tfmicle/model_format.py`` is for model versions.

An index folder (a local path or a URL: ``gs://``, ``ram://``; every file through
``tfmicle.fileio``)::

    INDEX/
        embeddings.npy    [N, D] float16 or float32, one L2-normalised row per case
        cases.json        {"case_ids": [N], "labels": [N], "metadata": {column: [N]}}
        index.json        the marker, written LAST: format, count, dim, dtype, the
                          aggregation, the model fingerprint and version, every file's size

The publish rule is the model repository's: every file first, the marker last, listing
each file with its size, so a reader tells a finished copy (made in any order) from one
in progress. A rebuild in place removes the old marker first, so the new files are never
read under the old marker.

One row per case. A case with several images is stored (and queried) as the mean of its
images' L2-normalised embeddings, re-normalised (``case_embeddings``): every image
counts once whatever its embedding's norm, and cosine similarity of two cases is then the
cosine of their mean directions.

An index is valid only for the model that embedded it: ``model_fingerprint`` names a
SavedModel by its bytes and ``check_matches`` refuses any other version. Imports numpy
only (TensorFlow only through fileio, for URLs). Map: docs/architecture.md.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from tfmicle import fileio
from tfmicle.cli import UsageError

INDEX_FILE = "index.json"        # the marker, written last
EMBEDDINGS_FILE = "embeddings.npy"
CASES_FILE = "cases.json"
FORMAT = "tfmicle-case-index"
FORMAT_VERSION = 1
AGGREGATION = "mean of L2-normalised image embeddings, re-normalised"
DTYPES = ("float16", "float32")
# float32 by default: exact search on float16 copies each chunk to float32 (numpy has no
# float16 BLAS), which measured slower than reading float32 (README, "Similar cases").
DEFAULT_DTYPE = "float32"
FINGERPRINT_FILES = ("saved_model.pb", "variables/variables.index")  # graph + every weight's checksum
FINGERPRINT_PREFIX = "sha256:"


class CaseIndexError(UsageError):
    """A case index that cannot be used: one line, exit 2 in a CLI."""


class IndexMissingError(CaseIndexError):
    """No index.json: not an index folder, or one still being written."""


class IndexIncompleteError(CaseIndexError):
    """index.json is there but a file it lists is missing or of another size (a copy in
    progress), or the files disagree with it."""


class IndexMismatchError(CaseIndexError):
    """The index was built by another model version than the one it is used with."""


@dataclass(frozen=True)
class CaseIndex:
    """A read index. ``embeddings`` [N, D] (float16 or float32), rows L2-normalised
    (a zero row, from an all-zero embedding, stays zero)."""

    path: str
    embeddings: np.ndarray
    case_ids: list[str]
    labels: list[str]
    metadata: dict[str, list[str]]
    fingerprint: str
    model_version: int | None
    info: dict = field(repr=False, default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


# --------------------------------------------------------------------------- the model

def model_fingerprint(version_dir: str | os.PathLike) -> str:
    """"sha256:<hex>" over saved_model.pb and variables/variables.index of a SavedModel
    folder (local or URL). The graph file names the computation; the variables index holds
    a CRC32C of every tensor's bytes, so retrained weights change it without reading the
    (large) data shards. Works on any SavedModel, with or without TensorFlow's own
    fingerprint.pb. CaseIndexError when the folder lacks either file."""
    h = hashlib.sha256()
    for rel in FINGERPRINT_FILES:
        path = fileio.join(version_dir, *rel.split("/"))
        try:
            data = fileio.read_bytes(path)
        except OSError:
            raise CaseIndexError(f"{os.fspath(version_dir)} is not a SavedModel folder: no {rel}") from None
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return FINGERPRINT_PREFIX + h.hexdigest()


def short(fingerprint: str) -> str:
    """The first 12 hex digits: enough to tell two models apart in a message."""
    return fingerprint[len(FINGERPRINT_PREFIX):][:12] if fingerprint.startswith(FINGERPRINT_PREFIX) else fingerprint[:12]


def check_matches(index: CaseIndex, version_dir: str | os.PathLike, version: int | None = None,
                  fingerprint: str | None = None) -> None:
    """Raises IndexMismatchError (one line naming both models) unless the index was built
    by this SavedModel. ``fingerprint``: the folder's, when the caller has it already."""
    fp = fingerprint or model_fingerprint(version_dir)
    if fp == index.fingerprint:
        return
    built = f"version {index.model_version}" if index.model_version is not None else "another model"
    used = f"version {version}" if version is not None else os.fspath(version_dir)
    raise IndexMismatchError(
        f"case index {index.path} was built by model {built} (fingerprint {short(index.fingerprint)}), "
        f"not by model {used} (fingerprint {short(fp)}); rebuild the index with this model version")


# --------------------------------------------------------------------------- vectors

def l2_normalise(x: np.ndarray) -> np.ndarray:
    """[N, D] -> float32 [N, D] with unit rows; an all-zero row stays zero (it has no
    direction: its cosine with anything is defined as 0)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def case_embeddings(image_embeddings: np.ndarray, case_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Per-image embeddings [M, D] and their case ids [M] -> (the case ids in order of
    first appearance [C], case embeddings [C, D] float32): the mean of each case's
    L2-normalised image embeddings, re-normalised. The server aggregates the images of
    one request the same way."""
    x = l2_normalise(image_embeddings)
    if x.ndim != 2 or len(case_ids) != x.shape[0]:
        raise ValueError(f"embeddings {x.shape} and {len(case_ids)} case ids do not pair up")
    order: dict[str, int] = {}
    rows = np.fromiter((order.setdefault(str(c), len(order)) for c in case_ids), np.int64, len(case_ids))
    sums = np.zeros((len(order), x.shape[1]), np.float64)
    np.add.at(sums, rows, x)  # the mean's scale does not matter: it is normalised next
    return list(order), l2_normalise(sums)


# --------------------------------------------------------------------------- writing

def _check_columns(n: int, case_ids: Sequence[str], labels: Sequence[str],
                   metadata: Mapping[str, Sequence[str]]) -> None:
    if len(case_ids) != n or len(labels) != n:
        raise ValueError(f"{n} embeddings but {len(case_ids)} case ids and {len(labels)} labels")
    if len(set(case_ids)) != n:
        raise ValueError("case ids repeat: one row per case (aggregate images with case_embeddings)")
    for name, values in metadata.items():
        if len(values) != n:
            raise ValueError(f"metadata column {name!r} has {len(values)} values for {n} cases")


def build_index(out: str | os.PathLike, embeddings: np.ndarray, case_ids: Sequence[str],
                labels: Sequence[str], metadata: Mapping[str, Sequence[str]] | None, fingerprint: str,
                model_version: int | None = None, dtype: str = DEFAULT_DTYPE,
                source: str | None = None) -> str:
    """Writes an index folder: case embeddings [N, D] (one row per case, normalised here),
    their case ids [N], labels (class names) [N], the metadata columns kept
    ({name: [N] str}), the fingerprint of the model that embedded them
    (``model_fingerprint``) and its version. ``source``: what was embedded, for people.
    Every file first, index.json last. Returns the marker's path."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: one of {', '.join(DTYPES)}")
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"embeddings must be [N, D], got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings hold NaN or inf")
    metadata = {str(k): [str(v) for v in vs] for k, vs in (metadata or {}).items()}
    case_ids, labels = [str(c) for c in case_ids], [str(v) for v in labels]
    _check_columns(x.shape[0], case_ids, labels, metadata)
    out = os.fspath(out)
    fileio.makedirs(out)
    marker = fileio.join(out, INDEX_FILE)
    if fileio.exists(marker):
        fileio.remove(marker)  # a rebuild: the old marker must not vouch for new files
    buf = io.BytesIO()
    np.save(buf, l2_normalise(x).astype(dtype), allow_pickle=False)
    fileio.write_bytes(fileio.join(out, EMBEDDINGS_FILE), buf.getvalue())
    fileio.write_text(fileio.join(out, CASES_FILE),
                      json.dumps({"case_ids": case_ids, "labels": labels, "metadata": metadata}))
    files = {f: fileio.getsize(fileio.join(out, f)) for f in (EMBEDDINGS_FILE, CASES_FILE)}
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "count": int(x.shape[0]),
            "dim": int(x.shape[1]), "dtype": dtype, "aggregation": AGGREGATION,
            "model_fingerprint": fingerprint, "model_version": model_version,
            "metadata_columns": list(metadata), "classes": sorted(set(labels)),
            "source": source, "files": files}
    fileio.write_marker(marker, json.dumps(info, indent=1))
    return marker


# --------------------------------------------------------------------------- reading

def read_info(path: str | os.PathLike) -> dict:
    """The marker of a finished index (format and file sizes checked); IndexMissingError
    without it, IndexIncompleteError while a listed file is missing or of another size."""
    path = os.fspath(path)
    marker = fileio.join(path, INDEX_FILE)
    if not fileio.isfile(marker):
        raise IndexMissingError(f"{path} is no case index: no {INDEX_FILE} (not built, or still being written; "
                                f"the index tool writes it last)")
    try:
        info = json.loads(fileio.read_text(marker))
        files = {str(k): int(v) for k, v in info["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise IndexIncompleteError(f"{marker} is unreadable (still being written?)") from None
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise IndexIncompleteError(f"{marker}: format {info.get('format')!r} version {info.get('format_version')!r}, "
                                   f"expected {FORMAT!r} version {FORMAT_VERSION}")
    for rel, size in files.items():
        try:
            got = fileio.getsize(fileio.join(path, rel))
        except OSError:
            raise IndexIncompleteError(f"{path}: {rel}, listed in {INDEX_FILE}, is missing (copy in progress?)") from None
        if got != size:
            raise IndexIncompleteError(f"{path}: {rel} has {got} bytes, {INDEX_FILE} says {size} (copy in progress?)")
    return info


def marker_stamp(path: str | os.PathLike) -> tuple[int, int] | None:
    """(size, mtime ns) of the marker, None without one: how a server notices a rebuild."""
    try:
        size, mtime, _ = fileio.stat_ns(fileio.join(path, INDEX_FILE))
    except OSError:
        return None
    return size, mtime


def read_index(path: str | os.PathLike) -> CaseIndex:
    """The index at path (local or URL). Raises IndexMissingError / IndexIncompleteError."""
    path = os.fspath(path)
    info = read_info(path)
    try:
        x = np.load(io.BytesIO(fileio.read_bytes(fileio.join(path, EMBEDDINGS_FILE))), allow_pickle=False)
        cases = json.loads(fileio.read_text(fileio.join(path, CASES_FILE)))
        case_ids, labels = list(cases["case_ids"]), list(cases["labels"])
        metadata = {str(k): list(v) for k, v in cases["metadata"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise IndexIncompleteError(f"{path}: cannot read the index files ({type(e).__name__}: {e})") from None
    want = (info.get("count"), info.get("dim"))
    if x.ndim != 2 or x.shape != want or str(x.dtype) != info.get("dtype"):
        raise IndexIncompleteError(f"{path}: {EMBEDDINGS_FILE} is {x.dtype} {x.shape}, {INDEX_FILE} says "
                                   f"{info.get('dtype')} {want}")
    try:
        _check_columns(x.shape[0], case_ids, labels, metadata)
    except ValueError as e:
        raise IndexIncompleteError(f"{path}: {e}") from None
    return CaseIndex(path=path, embeddings=x, case_ids=[str(c) for c in case_ids], labels=[str(v) for v in labels],
                     metadata=metadata, fingerprint=str(info.get("model_fingerprint")),
                     model_version=info.get("model_version"), info=info)


__all__ = ["INDEX_FILE", "EMBEDDINGS_FILE", "CASES_FILE", "FORMAT", "FORMAT_VERSION", "AGGREGATION", "DTYPES",
           "CaseIndex", "CaseIndexError", "IndexMissingError", "IndexIncompleteError", "IndexMismatchError",
           "model_fingerprint", "short", "check_matches", "l2_normalise", "case_embeddings", "build_index",
           "read_info", "read_index", "marker_stamp"]
