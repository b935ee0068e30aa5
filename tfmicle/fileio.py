"""Paths a user gives: a local path, or a URL that TensorFlow's filesystems understand
(TensorFlow 2.21 has ``gs://`` and ``ram://``, the in-memory one of the tests; ``s3://`` or
``hdfs://`` only where an imported plugin registers them). ``check_url`` turns any other
scheme into one line naming those that work (every CLI calls it on its paths).

One function per file operation, used by every tool that reads or writes user paths
(data_prep, export, score, serving, the records and model formats). A local path goes
to ``os`` / ``open`` / ``shutil`` (no TensorFlow import, symlinks followed, rename(2)
atomic); a URL goes to ``tf.io.gfile``, imported on first use, so the foundation
modules stay importable without TensorFlow.

Object stores have no atomic rename (a folder rename is a copy and a delete per
object), so writers ask ``has_atomic_rename`` and follow the publish rule instead:
write the files in place, then one marker file last (``published.json`` for a model
version, ``dataset.json`` for a records folder); readers ignore a folder without it.

``ram://`` is TensorFlow's in-memory filesystem: it lives in one process
(``is_process_local``), so work on it cannot be handed to worker processes.
Map: docs/architecture.md.
"""
from __future__ import annotations

import builtins
import io
import os
import posixpath
import re
import shutil
from typing import IO, Iterator

from tfmicle.cli import UsageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
PROCESS_LOCAL_SCHEMES = ("ram",)   # TensorFlow's RamFileSystem: one per process


def scheme(path: str | os.PathLike) -> str:
    """The URL scheme ("gs", "ram", ...) or "" for a local path (``file://`` is local)."""
    m = _SCHEME.match(os.fspath(path))
    return "" if m is None or m.group(1).lower() == "file" else m.group(1).lower()


def is_url(path: str | os.PathLike) -> bool:
    return scheme(path) != ""


def _local(path: str | os.PathLike) -> str:
    p = os.fspath(path)
    return p[len("file://"):] if p.lower().startswith("file://") else p


def has_atomic_rename(path: str | os.PathLike) -> bool:
    """True for local folders; object stores copy and delete instead."""
    return not is_url(path)


def is_process_local(path: str | os.PathLike) -> bool:
    """True for a filesystem only this process sees (``ram://``)."""
    return scheme(path) in PROCESS_LOCAL_SCHEMES


def _gfile():
    import tensorflow as tf
    return tf.io.gfile


class UnsupportedPath(UsageError):
    """A path this process cannot use: a URL scheme TensorFlow has no filesystem for, or
    ram:// where other processes must see the files. One line, exit 2 (tfmicle.cli)."""


def url_schemes() -> list[str]:
    """The URL schemes tf.io.gfile opens in this process (TensorFlow 2.21: gs, ram; more
    once a filesystem plugin is imported)."""
    return sorted(s for s in _gfile().get_registered_schemes() if s not in ("", "file"))


def check_url(path: str | os.PathLike | None, what: str) -> None:
    """Raises UnsupportedPath when path is a URL of a scheme no filesystem here opens
    (``s3://`` without a plugin, a typo such as ``gcs://``); local paths pass without
    importing TensorFlow. what: the flag or key that gave it (``--out``)."""
    s = scheme(path) if path else ""
    if not s:
        return
    works = url_schemes()
    if s not in works:
        raise UnsupportedPath(f"{what} {os.fspath(path)}: no filesystem for {s}:// in this "
                              f"TensorFlow; use a local path or "
                              f"{' or '.join(w + '://' for w in works)}")


def check_shared(path: str | os.PathLike, who: str) -> None:
    """Raises UnsupportedPath when other processes (Beam's workers) cannot see path:
    ``ram://`` lives in this process only. who: the flag that needs them (--runner beam)."""
    if is_process_local(path):
        raise UnsupportedPath(f"{who}: {os.fspath(path)} is on {scheme(path)}://, "
                              "TensorFlow's in-memory filesystem of one process, which "
                              "Beam's workers cannot see; use --runner local")


# --------------------------------------------------------------------------- names

def join(base: str | os.PathLike, *parts: str) -> str:
    base = os.fspath(base)
    if is_url(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def normpath(path: str | os.PathLike) -> str:
    """os.path.normpath for a local path; a URL keeps its ``scheme://`` and loses a
    trailing '/' (normpath would make "gs://b" of "gs:/b")."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.normpath(path)
    head, rest = path.split("://", 1)
    rest = posixpath.normpath(rest) if rest.strip("/") else ""
    return f"{head}://{rest.lstrip('/') if rest != '.' else ''}"


def basename(path: str | os.PathLike) -> str:
    return posixpath.basename(normpath(path)) if is_url(path) else os.path.basename(path)


def dirname(path: str | os.PathLike) -> str:
    """The parent; a URL's bucket root stays itself ("gs://b" -> "gs://b")."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.dirname(path)
    path = normpath(path)
    head, rest = path.split("://", 1)
    return f"{head}://{posixpath.dirname(rest)}" if "/" in rest else path


def abspath(path: str | os.PathLike) -> str:
    return normpath(path) if is_url(path) else os.path.abspath(path)


def realpath(path: str | os.PathLike) -> str:
    return normpath(path) if is_url(path) else os.path.realpath(path)


def relpath(path: str | os.PathLike, start: str | os.PathLike) -> str:
    if not is_url(path):
        return os.path.relpath(path, start)
    p, s = normpath(path), normpath(start).rstrip("/")
    if not p.startswith(s + "/"):
        raise ValueError(f"{path} is not under {start}")
    return p[len(s) + 1:]


def isabs(path: str | os.PathLike) -> bool:
    return is_url(path) or os.path.isabs(path)


# --------------------------------------------------------------------------- queries

def exists(path: str | os.PathLike) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(_local(path))


def isdir(path: str | os.PathLike) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(_local(path))


def isfile(path: str | os.PathLike) -> bool:
    if not is_url(path):
        return os.path.isfile(_local(path))
    g = _gfile()
    return g.exists(path) and not g.isdir(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """Entry names (no trailing '/'); OSError (FileNotFoundError) when it cannot be read."""
    if not is_url(path):
        return os.listdir(_local(path))
    import tensorflow as tf
    try:
        return [n.rstrip("/") for n in _gfile().listdir(path)]
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except tf.errors.OpError as e:
        raise OSError(f"{path}: {e.message}") from None


def getsize(path: str | os.PathLike) -> int:
    return stat_ns(path)[0]


def getmtime_ns(path: str | os.PathLike) -> int:
    return stat_ns(path)[1]


def stat_ns(path: str | os.PathLike) -> tuple[int, int, int]:
    """(size, mtime, last change) in bytes and ns; OSError when missing. The last change
    is max(mtime, ctime) locally: a copy that keeps the source's mtime (cp -p, rsync -t)
    cannot keep the ctime, so a file copied a moment ago never looks old. An object
    store has no ctime: its mtime is the upload's."""
    if not is_url(path):
        st = os.stat(_local(path))
        return st.st_size, st.st_mtime_ns, max(st.st_mtime_ns, st.st_ctime_ns)
    import tensorflow as tf
    try:
        st = _gfile().stat(path)
    except tf.errors.OpError as e:
        raise FileNotFoundError(f"{path}: {e.message}") from None
    return int(st.length), int(st.mtime_nsec), int(st.mtime_nsec)


def walk(top: str | os.PathLike, followlinks: bool = False
         ) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk's (dirpath, dirnames, filenames), top-down; edit dirnames to prune."""
    if not is_url(top):
        yield from os.walk(_local(top), followlinks=followlinks)
        return
    yield from _walk_url(normpath(top))


def _walk_url(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    try:
        names = listdir(top)
    except OSError:
        return
    dirs = [n for n in names if isdir(join(top, n))]
    files = [n for n in names if n not in dirs]
    yield top, dirs, files
    for d in dirs:       # after the caller pruned dirs
        yield from _walk_url(join(top, d))


def glob(pattern: str) -> list[str]:
    """Sorted matches of a shell pattern (``*``, ``?``, ``[0-9]``)."""
    if not is_url(pattern):
        import glob as _glob
        return sorted(_glob.glob(_local(pattern)))
    return sorted(_gfile().glob(pattern))


# --------------------------------------------------------------------------- changes

def open(path: str | os.PathLike, mode: str = "r", encoding: str = "utf-8",
         newline: str | None = None) -> IO:
    """A file object; text modes are UTF-8 (``encoding``, ``newline`` apply to local
    files; a URL's text is read and written as given, with no newline translation)."""
    if not is_url(path):
        if "b" in mode:
            return builtins.open(_local(path), mode)
        return builtins.open(_local(path), mode, encoding=encoding, newline=newline)
    import tensorflow as tf
    if is_process_local(path) and ("w" in mode) and _gfile().exists(path):
        _gfile().remove(path)   # TF 2.21's RamFileSystem appends to an existing file on "w"
    try:
        f = _gfile().GFile(os.fspath(path), mode.replace("t", ""))
        if "r" in mode:
            f.size()        # GFile opens lazily: raise FileNotFoundError here, not later
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except tf.errors.OpError as e:
        raise OSError(f"{path}: {e.message}") from None
    return f


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file; OSError (FileNotFoundError) when it cannot be read."""
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    import tensorflow as tf
    try:
        with open(path, "rb") as f:
            return f.read()
    except tf.errors.OpError as e:    # e.g. a folder: GFile fails on the first read
        raise OSError(f"{path}: {e.message}") from None


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of a file ('utf-8-sig' drops a byte-order mark)."""
    return read_bytes(path).decode(encoding)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_marker(path: str | os.PathLike, text: str) -> None:
    """Writes a marker file (the last write of a published folder) so that no reader
    sees it half-written: a temporary sibling renamed over it locally, one upload on an
    object store (an object appears whole when its upload ends)."""
    if not has_atomic_rename(path):
        write_text(path, text)
        return
    tmp = join(dirname(path), f".{basename(path)}.tmp")
    write_text(tmp, text)
    replace(tmp, path)


def text_stream(path: str | os.PathLike, encoding: str = "utf-8") -> io.StringIO:
    """The whole file as a StringIO (for csv readers; newlines kept as in the file)."""
    return io.StringIO(read_text(path, encoding), newline="")


def makedirs(path: str | os.PathLike, exist_ok: bool = True) -> None:
    if is_url(path):
        if not exist_ok and _gfile().exists(path):
            raise FileExistsError(f"{path} exists")
        _gfile().makedirs(path)   # object stores may have no folders: a no-op there
    else:
        os.makedirs(_local(path), exist_ok=exist_ok)


def remove(path: str | os.PathLike) -> None:
    if is_url(path):
        _gfile().remove(path)
    else:
        os.remove(_local(path))


def rmtree(path: str | os.PathLike, ignore_errors: bool = False) -> None:
    if not is_url(path):
        shutil.rmtree(_local(path), ignore_errors=ignore_errors)
        return
    try:
        _gfile().rmtree(path)
    except Exception:
        if not ignore_errors:
            raise


def rmdir_if_empty(path: str | os.PathLike) -> None:
    """Removes an empty folder (an object store's prefix needs nothing)."""
    try:
        if isdir(path) and not listdir(path):
            if is_url(path):
                _gfile().remove(path)
            else:
                os.rmdir(_local(path))
    except Exception:     # a prefix that is no object, a race: nothing to clean
        pass


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves a file over ``dst``. Atomic locally; on an object store a copy + delete,
    which is why the marker files are written last."""
    if is_url(src) or is_url(dst):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(_local(src), _local(dst))


def copy(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = True) -> None:
    if is_url(src) or is_url(dst):
        _gfile().copy(src, dst, overwrite=overwrite)
    else:
        shutil.copyfile(_local(src), _local(dst))


__all__ = ["scheme", "is_url", "has_atomic_rename", "is_process_local", "join", "normpath",
           "basename", "dirname", "abspath", "realpath", "relpath", "isabs", "exists", "isdir",
           "isfile", "listdir", "getsize", "getmtime_ns", "stat_ns", "walk", "glob", "open", "read_bytes",
           "read_text", "write_bytes", "write_text", "write_marker", "text_stream", "makedirs", "remove",
           "rmtree", "rmdir_if_empty", "replace", "copy"]
