"""The exported-model format: one owner for what ``tfmicle.export`` writes and what
``serving`` and ``tfmicle.score`` read, as ``tfmicle/data/records.py`` is for the records.

A model repository (TF Serving's layout)::

    MODELS/<name>/<version>/          integer versions; the highest is the one served
        saved_model.pb, variables/
        assets/labels.txt             class names, one per line, in output index order
        assets/metadata.json          FORMAT, task, class names, image size, training run...
        model_card.json, model_card.md  the model card (tfmicle.model_card); not listed
                                      in the marker, so a deployer may complete it in place
        published.json                the publish marker, written LAST (below)

Contract of the SavedModel: signature ``serving_default`` takes ``images`` (1-D
tf.string, encoded images) and returns ``probabilities`` float32 [batch, K] (and
``embedding``); tfmicle's export also has ``serving_pixels``, ``serving_explain``
(Grad-CAM, below) and the ``predict_preprocessed`` function. The probabilities are
calibrated when the model was exported with ``--calibrate`` (metadata "calibration"). New versions must pass a smoke test on
``probe_images()`` before they are published or served. ``tfmicle.model_load`` is the one
loader that checks this contract, for serving and score alike.

The publish rule (one rule for local folders and object stores): a version folder is
complete only when ``published.json`` is there and every file it lists has the size it
records. Writers stage the folder, call ``publish()`` last (it lists what is there, then
writes the marker under a temporary name and renames it), then rename the folder into
place where the filesystem can. Readers (``serving``'s repository, ``tfmicle.score``)
ignore a folder until ``unpublished_reason()`` is None, so a copy made file by file, in
any order, is never read half-way. A SavedModel made elsewhere is published with
``python -m tfmicle.model_format publish MODELS/<name>/<version>``, a whole TF Serving
repository with ``... publish MODELS/<name>`` (every version ``incomplete_reason()``
passes). The server also serves a folder with no marker once its files have settled
(serving/readiness.py): weaker, since a stalled copy looks finished.

Paths may be URLs (``gs://``, ``ram://``...): every file operation goes through
``tfmicle.fileio``. Where the destination has no atomic rename (an object store),
writers skip the staging folder and write the version folder in place: the marker,
written last, is what makes it a version (``staging_for``).

This module imports no TensorFlow for local paths (numpy and Pillow only), so the
server can use it without pulling in training. Map: docs/architecture.md.
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
from typing import Sequence

from tfmicle import fileio

SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"
ASSETS_DIR = "assets"
LABELS_FILE = ASSETS_DIR + "/labels.txt"
METADATA_FILE = ASSETS_DIR + "/metadata.json"
PUBLISHED_FILE = "published.json"  # the publish marker, written last
CASE_INDEX_DIR = "similar"  # <version>/similar/: its case index (tfmicle.caseindex), published by its own marker
MODEL_CARD_JSON = "model_card.json"  # <version>/: the model card (tfmicle.model_card)
MODEL_CARD_MD = "model_card.md"      # the same card as markdown
# Documentation, not the model: written before the marker but not listed in it, so
# filling in the card's placeholders never makes a served version look half-copied.
UNLISTED_FILES = (MODEL_CARD_JSON, MODEL_CARD_MD)
VARIABLES_DIR = "variables"
VARIABLES_INDEX = "variables.index"
_SHARD = re.compile(r"variables\.data-(\d{5})-of-(\d{5})")  # TensorFlow's checkpoint shard names
FORMAT = "tfmicle-classifier"
FORMAT_VERSION = 1

SIGNATURE = "serving_default"            # encoded images -> outputs
PIXELS_SIGNATURE = "serving_pixels"      # float RGB pixels -> outputs
PREPROCESSED_FUNCTION = "predict_preprocessed"  # pixels [B, S, S, 3], no preprocessing
IMAGES_INPUT = "images"
PROBABILITIES_OUTPUT = "probabilities"
EMBEDDING_OUTPUT = "embedding"
MAX_UINT_DIGITS = 18  # versions fit in an int64 (TF Serving's type), and int() stays cheap

# Grad-CAM (optional; models exported before it lack it): images + classes [B] int32
# (-1 = the top class) -> probabilities, heatmap [B, S, S] in [0, 1], the explained
# class [B] and the model's input pixels [B, S, S, 3] (what the heatmap lies over).
EXPLAIN_SIGNATURE = "serving_explain"
CLASSES_INPUT = "classes"
HEATMAP_OUTPUT = "heatmap"
EXPLAINED_CLASS_OUTPUT = "explained_class"
PIXELS_OUTPUT = "pixels"


# --------------------------------------------------------------------------- versions

def parse_uint(text: str, max_digits: int = MAX_UINT_DIGITS) -> int | None:
    """A non-negative integer someone typed (a version folder's name, a URL segment, a
    numeric header) -> int, or None. ASCII digits only, at most ``max_digits``:
    ``str.isdigit()`` also passes "²" (int() refuses it) and "٣" (int() reads 3), and
    int() of thousands of digits raises. The one such parser of the project."""
    if not (0 < len(text) <= max_digits and text.isascii() and text.isdigit()):
        return None
    return int(text)


def list_versions(base: str | os.PathLike) -> list[int]:
    """Integer-named sub-folders of a model folder, highest first (hidden and temporary
    folders ignored; [] when base cannot be read). Published or not: see
    ``unpublished_reason``."""
    try:
        names = fileio.listdir(base)
    except OSError:
        return []
    # "01" is not version 1's folder: only the canonical spelling names a version
    return sorted({v for n in names if (v := parse_uint(n)) is not None
                   and str(v) == n and fileio.isdir(fileio.join(base, n))}, reverse=True)


def next_version(base: str | os.PathLike) -> int:
    """1 + the highest integer-named folder in base (1 when none)."""
    return max(list_versions(base), default=0) + 1


def has_saved_model(version_dir: str | os.PathLike) -> bool:
    return any(fileio.isfile(fileio.join(version_dir, f))
               for f in (SAVED_MODEL_FILE, SAVED_MODEL_TEXT_FILE))


def incomplete_reason(version_dir: str | os.PathLike) -> str | None:
    """Why a version folder cannot hold a whole SavedModel yet (no saved_model.pb, no
    variables index, a variables shard missing), else None. What a folder without the
    marker must pass before serving's settle rule or ``publish_all`` take it; a file
    still being written passes it (the marker's sizes or the settle window catch that).
    A model card is never required: SavedModels from elsewhere have none."""
    if not has_saved_model(version_dir):
        return f"no {SAVED_MODEL_FILE}"
    try:
        names = fileio.listdir(fileio.join(version_dir, VARIABLES_DIR))
    except OSError:
        return f"no {VARIABLES_DIR}/"
    if VARIABLES_INDEX not in names:
        return f"no {VARIABLES_DIR}/{VARIABLES_INDEX}"
    shards = [(int(m[1]), int(m[2])) for n in names if (m := _SHARD.fullmatch(n))]
    if not shards:
        return f"no {VARIABLES_DIR}/variables.data-* shard"
    total = max(of for _i, of in shards)  # the name says how many shards there are
    missing = sorted(set(range(total)) - {i for i, of in shards if of == total})
    if missing:
        return f"{VARIABLES_DIR}/variables.data-{missing[0]:05d}-of-{total:05d} is missing"
    return None


def resolve_version(path: str) -> tuple[str, int | None]:
    """(version folder, version) of a published version folder, or of a model folder (its
    highest published integer version). FileNotFoundError, saying why, when there is none."""
    if fileio.isfile(fileio.join(path, SAVED_MODEL_FILE)):
        reason = unpublished_reason(path)
        if reason is not None:
            raise FileNotFoundError(f"model {path} is not published: {reason}")
        return path, parse_uint(fileio.basename(fileio.normpath(path)))
    if not fileio.isdir(path):
        raise FileNotFoundError(f"model {path} not found")
    reasons = []
    for v in list_versions(path):
        vdir = fileio.join(path, str(v))
        reason = unpublished_reason(vdir)
        if reason is None:
            return vdir, v
        reasons.append(f"version {v}: {reason}")
    if reasons:
        raise FileNotFoundError(f"no published version in {path} ({'; '.join(reasons[:3])})")
    raise FileNotFoundError(f"no SavedModel in {path} (expected {path}/<version>/"
                            f"{SAVED_MODEL_FILE})")


# --------------------------------------------------------------------------- publishing

def _files(version_dir: str | os.PathLike) -> dict[str, int]:
    """{relative path with '/': size} of every file in the folder but the marker, the
    case index (it has its own marker, and may be rebuilt while the model stays) and the
    model card (UNLISTED_FILES: edited in place by whoever deploys the model)."""
    out = {}
    for root, dirs, files in fileio.walk(version_dir):
        if fileio.normpath(root) == fileio.normpath(version_dir) and CASE_INDEX_DIR in dirs:
            dirs.remove(CASE_INDEX_DIR)
        for f in files:
            p = fileio.join(root, f)
            rel = fileio.relpath(p, version_dir).replace(os.sep, "/")
            if rel != PUBLISHED_FILE and rel not in UNLISTED_FILES and \
                    not f.startswith(f".{PUBLISHED_FILE}"):
                out[rel] = fileio.getsize(p)
    return dict(sorted(out.items()))


def publish(version_dir: str | os.PathLike) -> str:
    """Writes the publish marker: the LAST write of a version folder. It lists every file
    with its size, so a reader can tell a complete copy from one in progress whatever
    order the copy goes in. Raises FileNotFoundError when there is no SavedModel."""
    if not has_saved_model(version_dir):
        raise FileNotFoundError(f"{version_dir} has no {SAVED_MODEL_FILE}: nothing to publish")
    marker = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": _files(version_dir)}
    path = fileio.join(version_dir, PUBLISHED_FILE)
    fileio.write_marker(path, json.dumps(marker, indent=1))  # never seen half-written
    return path


def publish_all(base: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Publishes every version folder under a model base path that is complete
    (``incomplete_reason``) and has no marker: a TF Serving repository made by other
    tools. Returns (one line per version published or already published, one line per
    version refused, with the reason); a refused folder is left as it is."""
    done, refused = [], []
    for v in sorted(list_versions(base)):
        vdir = fileio.join(base, str(v))
        if fileio.isfile(fileio.join(vdir, PUBLISHED_FILE)):
            reason = unpublished_reason(vdir)  # never overwrite a marker: it may be right
            (done if reason is None else refused).append(
                f"{vdir}: already published" if reason is None else f"{vdir}: not published: {reason}")
            continue
        reason = incomplete_reason(vdir)
        if reason is None:
            done.append(publish(vdir))
        else:
            refused.append(f"{vdir}: not published: {reason} (publish it once the copy is complete)")
    return done, refused


def staging_for(final: str) -> str | None:
    """Where a writer stages a new version folder ``final``: a temporary sibling to
    rename into place after ``publish`` (local folders), or None on a filesystem without
    atomic rename (an object store: write ``final`` itself, ``publish`` last)."""
    if not fileio.has_atomic_rename(final):
        return None
    import tempfile
    base = fileio.dirname(final) or "."
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".tmp-export-{fileio.basename(final)}-", dir=base)


def unpublished_reason(version_dir: str | os.PathLike) -> str | None:
    """None when the version folder is complete by the publish rule, else why not (one
    line, for the log)."""
    path = fileio.join(version_dir, PUBLISHED_FILE)
    if not fileio.isfile(path):
        return (f"no {PUBLISHED_FILE} (the publish marker, written last by tfmicle.export; "
                f"publish a finished copy with 'python -m tfmicle.model_format publish DIR')")
    try:
        files = json.loads(fileio.read_text(path))["files"]
        items = [(str(k), int(v)) for k, v in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{PUBLISHED_FILE} is unreadable (still being written?)"
    for rel, size in items:
        p = fileio.join(version_dir, *rel.split("/"))
        try:
            got = fileio.getsize(p)
        except OSError:
            return f"{rel}, listed in {PUBLISHED_FILE}, is missing (copy in progress?)"
        if got != size:
            return f"{rel} has {got} bytes, {PUBLISHED_FILE} says {size} (copy in progress?)"
    if not any(rel == SAVED_MODEL_FILE or rel == SAVED_MODEL_TEXT_FILE for rel, _ in items):
        return f"{PUBLISHED_FILE} lists no {SAVED_MODEL_FILE}"
    return None


# --------------------------------------------------------------------------- assets

def write_labels(version_dir: str | os.PathLike, class_names: Sequence[str]) -> str:
    path = fileio.join(version_dir, LABELS_FILE)
    fileio.makedirs(fileio.dirname(path))
    fileio.write_text(path, "".join(f"{c}\n" for c in class_names))
    return path


def read_labels(version_dir: str | os.PathLike) -> list[str] | None:
    """The class names of labels.txt (trailing blank lines dropped); None without it."""
    path = fileio.join(version_dir, LABELS_FILE)
    if not fileio.isfile(path):
        return None
    lines = [line.strip() for line in fileio.read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def write_metadata(version_dir: str | os.PathLike, metadata: dict) -> str:
    path = fileio.join(version_dir, METADATA_FILE)
    fileio.makedirs(fileio.dirname(path))
    fileio.write_text(path, json.dumps(metadata, indent=2))
    return path


def read_metadata(version_dir: str | os.PathLike) -> dict:
    """metadata.json ({} for a SavedModel without one: any model that follows the
    contract can be served and scored)."""
    path = fileio.join(version_dir, METADATA_FILE)
    if not fileio.isfile(path):
        return {}
    return json.loads(fileio.read_text(path))


# --------------------------------------------------------------------------- probes

def probe_images() -> list[bytes]:
    """A small PNG and a small JPEG of seeded random pixels (40 x 36): the smoke test
    every new version must pass (export's check, the server's load, scoring a model
    without labels.txt)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    out = []
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


__all__ = ["SAVED_MODEL_FILE", "LABELS_FILE", "CASE_INDEX_DIR", "MODEL_CARD_JSON", "MODEL_CARD_MD",
           "UNLISTED_FILES", "METADATA_FILE", "FORMAT", "FORMAT_VERSION",
           "SIGNATURE", "PIXELS_SIGNATURE", "PREPROCESSED_FUNCTION", "IMAGES_INPUT",
           "PROBABILITIES_OUTPUT", "EMBEDDING_OUTPUT", "PUBLISHED_FILE", "parse_uint",
           "EXPLAIN_SIGNATURE", "CLASSES_INPUT", "HEATMAP_OUTPUT", "EXPLAINED_CLASS_OUTPUT",
           "PIXELS_OUTPUT",
           "list_versions", "next_version", "has_saved_model", "incomplete_reason",
           "resolve_version", "publish", "publish_all", "staging_for",
           "unpublished_reason", "write_labels", "read_labels", "write_metadata",
           "read_metadata", "probe_images"]


def main(argv: list[str] | None = None) -> int:
    """``python -m tfmicle.model_format publish DIR``: publish a finished version folder
    that another tool wrote (a SavedModel of the serving contract), or every complete
    version of a model base path (a TF Serving repository). Exit 1 when a version of a
    base path was refused, 2 on a mistake (one line each)."""
    from tfmicle import cli

    prog = "python -m tfmicle.model_format"
    p = cli.ArgumentParser(prog=prog,
                           description="Publish finished model version folders: write "
                                       f"{PUBLISHED_FILE}, the marker servers and scoring wait for.")
    p.add_argument("command", choices=["publish"])
    p.add_argument("path", metavar="DIR",
                   help="MODELS/<name>/<version>, complete (SavedModel, assets), or MODELS/<name>: "
                        "every version there with saved_model.pb and variables/ but no marker")
    args = p.parse_args(argv)

    def body() -> int:
        fileio.check_url(args.path, "DIR")
        if not fileio.isdir(args.path):
            raise cli.UsageError(f"{args.path} is not a folder")
        if has_saved_model(args.path) or not list_versions(args.path):
            print(publish(args.path))  # a version folder ("nothing to publish" when it is not)
            return 0
        done, refused = publish_all(args.path)
        for line in done:
            print(line)
        for line in refused:
            sys.stderr.write(f"{prog}: {line}\n")
        return 1 if refused else 0

    return cli.run(prog, body)


if __name__ == "__main__":
    sys.exit(main())
