"""A TF-Serving-style model repository: ``<base>/<integer version>/``.

The highest loadable version is served. A version folder counts only once it is
published (tfmicle.model_format's rule: ``published.json`` written last, every file
it lists there at its size); an unpublished folder is ignored, with one log line
saying why. A background thread polls the folder; a new published version is
loaded once its files have stopped changing between two polls, checked and
smoke-tested, then swapped in with one reference assignment, so batches already
running keep the model they started with.
A version that fails to load is refused (logged, counted) and the current one
keeps serving; it is retried only if its files change.

The base path may be a URL (``gs://bucket/models/<name>``, ``ram://`` in tests): every
look goes through tfmicle.fileio, so polling an object store lists its objects. There
the files of a version appear one by one in any order, which is why the publish marker
(written last, listing every file and its size) decides, not the folder's existence.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

from tfmicle import fileio
from tfmicle.model_format import list_versions, unpublished_reason

from .model import ModelLoadError, ServedModel, load_version

log = logging.getLogger(__name__)

Fingerprint = tuple


class NoModelError(Exception):
    """No version folder in the base path could be loaded."""


@dataclass(frozen=True)
class VersionState:
    version: int
    state: str  # AVAILABLE | END (TF Serving's names)
    error: str = ""


def fingerprint(folder: str | os.PathLike) -> Fingerprint:
    """(relative path, size, mtime) of every file: changes while a copy is in progress."""
    items = []
    for root, _dirs, files in fileio.walk(folder):
        for f in files:
            p = fileio.join(root, f)
            try:
                size, mtime = fileio.getsize(p), fileio.getmtime_ns(p)
            except OSError:
                continue
            items.append((fileio.relpath(p, folder), size, mtime))
    return tuple(sorted(items))


class ModelRepository:
    def __init__(
        self,
        base_path: str | os.PathLike,
        name: str,
        loader: Callable[[str, str, int], ServedModel] = load_version,
        on_load: Callable[[str, int, bool], None] | None = None,
    ):
        self.base_path = fileio.normpath(base_path)  # a str: pathlib would make "gs:/b" of "gs://b"
        self.name = name
        self._loader = loader
        self.on_load = on_load  # (name, version, success), for metrics
        self._current: ServedModel | None = None
        self._failed: dict[int, tuple[Fingerprint, str]] = {}
        self._seen: dict[int, Fingerprint] = {}
        self._unpublished: dict[int, str] = {}  # version -> why it is ignored (logged once)
        self._lock = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> ServedModel | None:
        return self._current

    def _folder(self, version: int) -> str:
        return fileio.join(self.base_path, str(version))

    def _try_load(self, version: int, fp: Fingerprint) -> ServedModel | None:
        folder = self._folder(version)
        try:
            model = self._loader(folder, self.name, version)
        except ModelLoadError as e:
            msg = str(e)
        except Exception as e:  # a loader bug must not kill the poller
            msg = f"{type(e).__name__}: {e}"
        else:
            self._failed.pop(version, None)
            if self.on_load:
                self.on_load(self.name, version, True)
            return model
        self._failed[version] = (fp, msg)
        if self.on_load:
            self.on_load(self.name, version, False)
        if self._current is not None:
            log.error("refused %s version %d, still serving version %d: %s", self.name, version, self._current.version, msg)
        else:
            log.error("cannot load %s version %d: %s", self.name, version, msg)
        return None

    def _published(self, version: int) -> bool:
        """True when the version folder is complete by the publish rule; logs why not,
        once per version and reason."""
        reason = unpublished_reason(self._folder(version))
        if reason is None:
            if self._unpublished.pop(version, None) is not None:
                log.info("%s version %d is now published", self.name, version)
            return True
        if self._unpublished.get(version) != reason:
            self._unpublished[version] = reason
            log.warning("ignoring %s version %d until it is published: %s", self.name, version, reason)
        return False

    def _swap(self, model: ServedModel) -> None:
        old = self._current
        self._current = model
        if old is None:
            log.info("serving %s version %d", self.name, model.version)
        else:
            log.info("now serving %s version %d (was %d)", self.name, model.version, old.version)

    def load_initial(self) -> ServedModel:
        """Load the highest version that works, now. Raises NoModelError."""
        with self._lock:
            versions = list_versions(self.base_path)
            if not versions:
                raise NoModelError(f"no integer version folders (e.g. {self._folder(1)}) in {self.base_path}")
            for v in versions:
                if not self._published(v):
                    continue
                fp = fingerprint(self._folder(v))
                self._seen[v] = fp
                model = self._try_load(v, fp)
                if model is not None:
                    self._swap(model)
                    return model
            errors = "; ".join(f"version {v}: {self._failed[v][1]}" for v in versions if v in self._failed)
            errors = errors or "; ".join(f"version {v}: {self._unpublished[v]}" for v in versions[:3]
                                         if v in self._unpublished)
            raise NoModelError(f"no loadable version in {self.base_path}: {errors}")

    def poll(self) -> bool:
        """One look at the folder; True when the served version changed."""
        with self._lock:
            versions = list_versions(self.base_path)
            for gone in set(self._failed) - set(versions):
                del self._failed[gone]  # deleted folders drop out of the status
            for gone in set(self._unpublished) - set(versions):
                del self._unpublished[gone]
            current = self._current
            current_present = current is not None and current.version in versions
            for v in versions:
                if current_present and v <= current.version:
                    break
                if not self._published(v):
                    continue
                fp = fingerprint(self._folder(v))
                failed = self._failed.get(v)
                if failed is not None and failed[0] == fp:
                    continue  # known bad, unchanged since
                if self._seen.get(v) != fp:
                    self._seen[v] = fp  # new or still being written: look again next poll
                    continue
                model = self._try_load(v, fp)
                if model is not None:
                    self._swap(model)
                    return True
            if current is not None and not current_present and versions == []:
                log.warning("no version folders left in %s; still serving version %d from memory", self.base_path, current.version)
            return False

    def states(self) -> list[VersionState]:
        """The served version and the refused ones, TF Serving style."""
        out = []
        cur = self._current
        if cur is not None:
            out.append(VersionState(cur.version, "AVAILABLE"))
        for v, (_fp, _msg) in sorted(list(self._failed.items()), reverse=True):
            if cur is None or v != cur.version:
                out.append(VersionState(v, "END", "failed to load; see the server log"))
        return out

    # -- background polling -------------------------------------------------
    def start_polling(self, interval_s: float) -> None:
        if interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # never let the poller die
                    log.exception("version poll of %s failed", self.base_path)

        self._thread = threading.Thread(target=loop, name="serving-version-poller", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=30)
