"""A TF-Serving-style model repository: ``<base>/<integer version>/``.

The highest loadable version is served. A version folder is loaded only once it is
ready (serving.readiness: published by tfmicle.model_format's marker, or, without a
marker, settled: a whole SavedModel whose files have not changed for the settle
window); until then it waits, with one log line saying why. A background thread polls
the folder; a new ready version is loaded, checked and smoke-tested, then swapped in
with one reference assignment, so batches already running keep the model they started
with. A version that fails to load is refused (logged with the reason, counted) and the
current one keeps serving; it is retried only if its files change.
Every version not served, waiting or refused, is in ``states()`` with its reason (TF
Serving's model status, and a gauge in /metrics), so an operator can alert on it.

The base path may be a URL (``gs://bucket/models/<name>``, ``ram://`` in tests): every
look goes through tfmicle.fileio, so polling an object store lists its objects. There
the files of a version appear one by one in any order, which is why the publish marker
(written last, listing every file and its size) decides, not the folder's existence.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from tfmicle import fileio
from tfmicle.cli import UsageError
from tfmicle.model_format import PUBLISHED_FILE, list_versions

from .model import ModelLoadError, ServedModel, load_version
from .readiness import CHANGING, INCOMPLETE, SETTLE_SECONDS, SETTLED, SETTLING, Fingerprint, Look, Readiness

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500  # a reason in the model status stays readable (a TF error can be pages long)


class NoModelError(UsageError):
    """No version folder in the base path could be loaded (one line, exit 2)."""


@dataclass(frozen=True)
class VersionState:
    version: int
    state: str  # AVAILABLE (served) | START (waiting to be ready) | END (refused): TF Serving's names
    error: str = ""


class ModelRepository:
    def __init__(
        self,
        base_path: str | os.PathLike,
        name: str,
        loader: Callable[[str, str, int], ServedModel] = load_version,
        on_load: Callable[[str, int, bool], None] | None = None,
        settle_seconds: float = SETTLE_SECONDS,
        require_published: bool = False,
    ):
        self.base_path = fileio.normpath(base_path)  # a str: pathlib would make "gs:/b" of "gs://b"
        self.name = name
        self._loader = loader
        self.on_load = on_load  # (name, version, success), for metrics
        self.on_states: Callable[[str, list[VersionState]], None] | None = None  # after each look, for metrics
        self._readiness = Readiness(settle_seconds, require_published)
        self._current: ServedModel | None = None
        self._failed: dict[int, tuple[Fingerprint, str]] = {}  # version -> (its files, why), refused
        self._waiting: dict[int, Look] = {}  # version -> why it is not ready yet
        self._logged: dict[int, str] = {}  # version -> the kind of wait last logged (once per kind)
        self._advised: set[int] = set()  # versions served without a marker, told so once
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
        # the status names the version, not the server's folders
        shown = msg.replace(folder, f"version {version}")
        self._failed[version] = (fp, shown if len(shown) <= MAX_REASON_CHARS else shown[:MAX_REASON_CHARS] + "...")
        if self.on_load:
            self.on_load(self.name, version, False)
        if self._current is not None:
            log.error("refused %s version %d, still serving version %d: %s", self.name, version, self._current.version, msg)
        else:
            log.error("cannot load %s version %d: %s", self.name, version, msg)
        return None

    def _look(self, version: int, at_start: bool = False) -> Look:
        """Whether the version folder is ready to load; logs why not once per version and
        kind of reason, and a version served without a marker once."""
        look = self._readiness.look(self._folder(version), version, at_start)
        if not look.ready:
            self._waiting[version] = look
            if look.kind != CHANGING and self._logged.get(version) != look.kind:
                self._logged[version] = look.kind
                log.warning("ignoring %s version %d until it is published: %s", self.name, version, look.reason)
            return look
        self._waiting.pop(version, None)
        if self._logged.pop(version, None) is not None:
            log.info("%s version %d is now %s", self.name, version, look.kind)
        if look.kind == SETTLED and version not in self._advised:
            self._advised.add(version)
            log.warning("loading %s version %d without %s: its files have not changed for %g s (--settle-seconds). "
                        "A copy that pauses that long would be loaded half-way; the marker is the safe way to "
                        "publish: tfmicle.export writes it, 'python -m tfmicle.model_format publish %s' writes it "
                        "for every finished version, --require-published serves only marked versions",
                        self.name, version, PUBLISHED_FILE, self._readiness.settle_s, self.base_path)
        return look

    def _swap(self, model: ServedModel) -> None:
        old = self._current
        self._current = model
        if old is None:
            log.info("serving %s version %d", self.name, model.version)
        else:
            log.info("now serving %s version %d (was %d)", self.name, model.version, old.version)

    def _forget_gone(self, versions: list[int]) -> None:
        """Deleted folders, and waits below the served version, drop out of the status."""
        present = set(versions)
        cur = self._current
        for table in (self._failed, self._logged):
            for gone in set(table) - present:
                del table[gone]
        self._advised &= present
        for v in list(self._waiting):
            if v not in present or (cur is not None and v < cur.version):
                del self._waiting[v]
        self._readiness.forget(present)

    def _report(self) -> None:
        if self.on_states:
            self.on_states(self.name, self.states())

    def load_initial(self) -> ServedModel:
        """Load the highest version that works, now; while none does but a folder without
        a marker is still changing (a copy in progress), wait for it to settle. Raises
        NoModelError."""
        while True:
            with self._lock:
                versions = list_versions(self.base_path)
                if not versions:
                    raise NoModelError(f"no integer version folders (e.g. {self._folder(1)}) in {self.base_path}")
                self._forget_gone(versions)  # a folder deleted while we wait is waited for no more
                for v in versions:
                    look = self._look(v, at_start=True)
                    failed = self._failed.get(v)
                    if not look.ready or (failed is not None and failed[0] == look.fingerprint):
                        continue
                    model = self._try_load(v, look.fingerprint)
                    if model is not None:
                        self._swap(model)
                        self._forget_gone(versions)
                        self._report()
                        return model
                settle_s = self._readiness.settle_s
                # a copy still making progress may become loadable: wait for it rather than exit
                if not any(look.kind in (SETTLING, INCOMPLETE) and look.quiet_s < settle_s
                           for look in self._waiting.values()):
                    raise NoModelError(f"no loadable version in {self.base_path}: {self._why_none(versions)}")
            time.sleep(min(1.0, max(0.05, settle_s / 10)))

    def _why_none(self, versions: list[int]) -> str:
        errors = "; ".join(f"version {v}: {self._failed[v][1]}" for v in versions if v in self._failed)
        return errors or "; ".join(f"version {v}: {self._waiting[v].reason}" for v in versions[:3]
                                   if v in self._waiting)

    def poll(self) -> bool:
        """One look at the folder; True when the served version changed."""
        with self._lock:
            versions = list_versions(self.base_path)
            self._forget_gone(versions)
            current = self._current
            current_present = current is not None and current.version in versions
            changed = False
            for v in versions:
                if current_present and v <= current.version:
                    break
                look = self._look(v)
                if not look.ready:
                    continue
                failed = self._failed.get(v)
                if failed is not None and failed[0] == look.fingerprint:
                    continue  # known bad, unchanged since
                model = self._try_load(v, look.fingerprint)
                if model is not None:
                    self._swap(model)
                    changed = True
                    break
            if changed:
                self._forget_gone(versions)
            if current is not None and not current_present and versions == []:
                log.warning("no version folders left in %s; still serving version %d from memory", self.base_path, current.version)
            self._report()
            return changed

    def states(self) -> list[VersionState]:
        """The served version, those waiting to be ready (START) and the refused ones (END),
        each with its reason, highest first: TF Serving's model status."""
        cur = self._current
        waiting, failed = dict(self._waiting), dict(self._failed)  # copies: the poller changes them
        out = [] if cur is None else [VersionState(cur.version, "AVAILABLE")]
        out += [VersionState(v, "START", look.reason) for v, look in waiting.items() if cur is None or v > cur.version]
        out += [VersionState(v, "END", f"failed to load: {msg}") for v, (_fp, msg) in failed.items()
                if (cur is None or v != cur.version) and v not in waiting]
        return sorted(out, key=lambda s: s.version, reverse=True)

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
