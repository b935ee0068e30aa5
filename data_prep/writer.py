"""The output folder: refuse to clobber, stage, write shards, publish atomically.

Everything is first written into a staging folder inside ``--out``
(``.data_prep-staging-*``), then renamed into place file by file, ``dataset.json``
last: a failed run leaves no half-written shard behind under a final name.

``--out`` may be a URL (``gs://bucket/records``): every operation goes through
tfmicle.fileio. An object store has no atomic rename (a rename there is a copy and a
delete), so the rule readers rely on is the marker: ``dataset.json`` is written last,
and a folder without it is not a dataset (``records.load_dataset_info`` refuses it).
--overwrite removes the old ``dataset.json`` first, so a reader never pairs the old
description with new shards.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import uuid

from data_prep.errors import UserError
from tfmicle import fileio

log = logging.getLogger(__name__)

STAGING_PREFIX = ".data_prep-staging-"
SKIPPED_CSV = "skipped.csv"
_SHARD_RE = re.compile(r"^[A-Za-z0-9_-]+-\d{5}-of-\d{5}\.tfrecord$")


def _dataset_json() -> str:
    from tfmicle.data.records import DATASET_JSON
    return DATASET_JSON


def _subsets_dir() -> str:
    from tfmicle.data.records import SUBSETS_DIR
    return SUBSETS_DIR


def owned_outputs(out: str) -> list[str]:
    """Paths in ``out`` that a data_prep run writes (and --overwrite replaces)."""
    if not fileio.isdir(out):
        return []
    paths = []
    for name in sorted(fileio.listdir(out)):
        p = fileio.join(out, name)
        if (_SHARD_RE.match(name) or name in (_dataset_json(), SKIPPED_CSV)) and fileio.isfile(p):
            paths.append(p)
        elif name.startswith(STAGING_PREFIX) and fileio.isdir(p):
            paths.append(p)
    sub = fileio.join(out, _subsets_dir())
    paths += fileio.glob(fileio.join(sub, "*.txt"))
    return paths


def check_out_dir(out: str, overwrite: bool) -> None:
    """Refuses a non-empty output folder unless overwrite; raises UserError."""
    if fileio.exists(out) and not fileio.isdir(out):
        raise UserError(f"--out {out}: exists and is not a folder")
    if not fileio.isdir(out) or not fileio.listdir(out):
        return
    if not overwrite:
        raise UserError(f"--out {out}: folder is not empty (add --overwrite to replace the "
                        "dataset there)")
    owned = set(owned_outputs(out))
    others = [n for n in fileio.listdir(out) if fileio.join(out, n) not in owned
              and n != _subsets_dir()]
    if others:
        log.warning("--overwrite: %d entries in %s that data_prep did not write are left "
                    "alone (e.g. %s)", len(others), out, others[0])


def make_staging(out: str) -> str:
    try:
        fileio.makedirs(out)
        if fileio.is_url(out):
            staging = fileio.join(out, STAGING_PREFIX + uuid.uuid4().hex[:8])
            fileio.makedirs(staging)
            return staging
        return tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out)
    except Exception as e:      # OSError locally, tf.errors.OpError on a URL
        raise UserError(f"--out {out}: cannot write there "
                        f"({getattr(e, 'strerror', None) or getattr(e, 'message', e)})") from None


def discard(staging: str) -> None:
    fileio.rmtree(staging, ignore_errors=True)


def publish(staging: str, out: str) -> None:
    """Replaces the dataset in ``out`` by the staged one; dataset.json moves last."""
    owned = owned_outputs(out)
    # the old description goes first: no reader pairs it with the new shards
    owned.sort(key=lambda p: fileio.basename(p) != _dataset_json())
    for p in owned:
        if fileio.abspath(p) == fileio.abspath(staging):
            continue
        if fileio.isdir(p):
            fileio.rmtree(p, ignore_errors=True)
        else:
            fileio.remove(p)
    staged = []
    for dirpath, _, files in fileio.walk(staging):
        for f in files:
            staged.append(fileio.relpath(fileio.join(dirpath, f), staging))
    staged.sort(key=lambda r: (r == _dataset_json(), r))
    for rel in staged:
        dst = fileio.join(out, rel)
        fileio.makedirs(fileio.dirname(dst))
        fileio.replace(fileio.join(staging, rel), dst)
    discard(staging)
    fileio.rmdir_if_empty(fileio.join(out, _subsets_dir()))


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``path`` through a temporary name in the same folder, then renames (a URL:
    written in place; an object appears whole when its upload ends)."""
    if fileio.is_url(path):
        fileio.makedirs(fileio.dirname(path))
        fileio.write_text(path, text)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class ShardWriter:
    """Writes one TFRecord shard under a temporary name; ``close()`` renames it."""

    def __init__(self, path: str):
        import tensorflow as tf
        self.path = path
        self.tmp = fileio.join(fileio.dirname(path), "." + fileio.basename(path) + ".tmp")
        self._w = tf.io.TFRecordWriter(self.tmp)
        self.records = 0

    def write(self, serialized: bytes) -> None:
        self._w.write(serialized)
        self.records += 1

    def close(self) -> None:
        self._w.close()
        fileio.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._w.close()
        if fileio.exists(self.tmp):
            fileio.remove(self.tmp)
