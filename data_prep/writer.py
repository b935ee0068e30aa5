"""The output folder: refuse to clobber, stage, write shards, publish atomically.

Everything is first written into a staging folder inside ``--out``
(``.data_prep-staging-*``), then renamed into place, ``dataset.json`` last: a
reader sees either the previous complete dataset or the new one, and a failed run
leaves no half-written shard behind under a final name.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile

from data_prep.errors import UserError

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
    if not os.path.isdir(out):
        return []
    paths = []
    for name in sorted(os.listdir(out)):
        p = os.path.join(out, name)
        if (_SHARD_RE.match(name) or name in (_dataset_json(), SKIPPED_CSV)) and os.path.isfile(p):
            paths.append(p)
        elif name.startswith(STAGING_PREFIX) and os.path.isdir(p):
            paths.append(p)
    sub = os.path.join(out, _subsets_dir())
    paths += sorted(glob.glob(os.path.join(sub, "*.txt")))
    return paths


def check_out_dir(out: str, overwrite: bool) -> None:
    """Refuses a non-empty output folder unless overwrite; raises UserError."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a folder")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    if not overwrite:
        raise UserError(f"--out {out}: folder is not empty (add --overwrite to replace the "
                        "dataset there)")
    owned = set(owned_outputs(out))
    others = [n for n in os.listdir(out) if os.path.join(out, n) not in owned
              and n != _subsets_dir()]
    if others:
        log.warning("--overwrite: %d entries in %s that data_prep did not write are left "
                    "alone (e.g. %s)", len(others), out, others[0])


def make_staging(out: str) -> str:
    try:
        os.makedirs(out, exist_ok=True)
        return tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def discard(staging: str) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def publish(staging: str, out: str) -> None:
    """Replaces the dataset in ``out`` by the staged one; dataset.json moves last."""
    for p in owned_outputs(out):
        if os.path.abspath(p) == os.path.abspath(staging):
            continue
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.remove(p)
    staged = []
    for dirpath, _, files in os.walk(staging):
        for f in files:
            staged.append(os.path.relpath(os.path.join(dirpath, f), staging))
    staged.sort(key=lambda r: (r == _dataset_json(), r))
    for rel in staged:
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(os.path.join(staging, rel), dst)
    discard(staging)
    sub = os.path.join(out, _subsets_dir())
    if os.path.isdir(sub) and not os.listdir(sub):
        os.rmdir(sub)


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``path`` through a temporary name in the same folder, then renames."""
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
        self.tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        self._w = tf.io.TFRecordWriter(self.tmp)
        self.records = 0

    def write(self, serialized: bytes) -> None:
        self._w.write(serialized)
        self.records += 1

    def close(self) -> None:
        self._w.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._w.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
