"""When a version folder on disk may be loaded: the repository asks ``Readiness.look``.

Two rules, the exact one first:

- published: ``published.json`` (tfmicle.model_format's marker, written last, listing
  every file with its size) is there and every file matches it. A folder with a marker
  is judged by the marker alone, whatever its age: it knows the whole file list.
- settled (a folder without the marker, e.g. a TF Serving repository made by other
  tools; off with ``require_published``): the folder holds a whole SavedModel's files
  (``model_format.incomplete_reason``) and none of them has changed, in size, mtime or
  ctime, for ``settle_s``. The window restarts on every change, so a file-by-file copy
  is not loaded while it is still making progress; the ctime is in it because a copy
  that keeps the source's mtimes (cp -p, rsync -a) cannot keep the ctime. A copy that
  stalls for longer than the window is indistinguishable from a finished one: that is
  why the marker stays the safe way to publish, and the server says so once per version.

Besides, a folder is loaded only once two looks have seen the same files (a poll
interval apart). The window is what the server watched, except at start-up, where the
files' change times count too: a repository that has been there for a while is
served at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from tfmicle import fileio
from tfmicle.model_format import PUBLISHED_FILE, incomplete_reason, unpublished_reason

SETTLE_SECONDS = 10.0  # a copy that pauses this long between files looks finished

Fingerprint = tuple  # ((relative path, size, mtime ns, last change ns), ...), sorted

# Kinds of answer. The repository logs a folder's kind once (not every poll) and counts it.
PUBLISHED = "published"  # loadable by the marker
SETTLED = "settled"  # loadable by the settle rule (no marker)
CHANGING = "changing"  # files changed since the last look
UNMATCHED = "unmatched"  # has a marker that its files do not match yet
STRICT = "strict"  # no marker, and require_published
INCOMPLETE = "incomplete"  # no marker, and not a whole SavedModel
SETTLING = "settling"  # no marker, whole, but changed within the window


def fingerprint(folder: str | os.PathLike) -> Fingerprint:
    """(relative path, size, mtime, last change) of every file: changes while a copy is in
    progress."""
    items = []
    for root, _dirs, files in fileio.walk(folder):
        for f in files:
            p = fileio.join(root, f)
            try:
                size, mtime, changed = fileio.stat_ns(p)
            except OSError:
                continue  # deleted between the listing and the stat: the next look sees it
            items.append((fileio.relpath(p, folder), size, mtime, changed))
    return tuple(sorted(items))


@dataclass(frozen=True)
class Look:
    """One look at a version folder: ``ready`` to load, else ``reason`` (one line)."""

    kind: str
    reason: str
    fingerprint: Fingerprint
    quiet_s: float = 0.0  # without a marker: how long its files have not changed

    @property
    def ready(self) -> bool:
        return self.kind in (PUBLISHED, SETTLED)


class Readiness:
    """Remembers what each version folder looked like, and since when, to apply the rules
    above. Not thread-safe: the repository calls it under its lock."""

    def __init__(self, settle_s: float = SETTLE_SECONDS, require_published: bool = False,
                 clock: Callable[[], float] = time.monotonic, wall_ns: Callable[[], int] = time.time_ns):
        self.settle_s = settle_s
        self.require_published = require_published
        self._clock, self._wall_ns = clock, wall_ns  # injectable for tests
        self._seen: dict[int, tuple[Fingerprint, float]] = {}  # version -> (files, first seen)

    def forget(self, keep: set[int]) -> None:
        """Drops the memory of folders that are gone."""
        for v in set(self._seen) - keep:
            del self._seen[v]

    def look(self, folder: str, version: int, at_start: bool = False) -> Look:
        """Whether the folder is ready now. ``at_start``: the server is starting, so one
        look is enough, and the files' change times count towards the window."""
        fp = fingerprint(folder)
        now = self._clock()
        seen = self._seen.get(version)
        if seen is None or seen[0] != fp:
            self._seen[version] = (fp, now)
        steady = seen is not None and seen[0] == fp  # two looks saw the same files
        if fileio.isfile(fileio.join(folder, PUBLISHED_FILE)):
            reason = unpublished_reason(folder)
            if reason is not None:
                return Look(UNMATCHED, reason, fp)
            if steady or at_start:
                return Look(PUBLISHED, "", fp)
            return Look(CHANGING, "files changed since the last look", fp)
        no_marker = f"no {PUBLISHED_FILE}"
        if self.require_published:
            return Look(STRICT, unpublished_reason(folder) + " (--require-published)", fp)
        quiet_s = self.quiet_seconds(version, fp, at_start)
        missing = incomplete_reason(folder)
        if missing is not None:
            return Look(INCOMPLETE, f"{no_marker}, and not a whole SavedModel: {missing}", fp, quiet_s)
        if quiet_s >= self.settle_s and (steady or at_start):
            return Look(SETTLED, "", fp, quiet_s)
        return Look(SETTLING, f"{no_marker}; served once its files have not changed for {self.settle_s:g} s "
                              f"(--settle-seconds; last change {max(quiet_s, 0):.0f} s ago)", fp, quiet_s)

    def quiet_seconds(self, version: int, fp: Fingerprint, at_start: bool) -> float:
        """How long the folder's files have not changed: as watched by this object, and at
        start-up also as their change times say (a folder already old is served at once).
        Later only what was watched counts: an object store's clock may run behind ours,
        which would make a file uploaded a moment ago look old. A filesystem that keeps no
        times (ram:// says 0) gives only what was watched."""
        watched = self._clock() - self._seen[version][1]
        changes = [changed for *_rest, changed in fp]
        if not at_start or not changes or min(changes) <= 0:
            return watched
        return max(watched, (self._wall_ns() - max(changes)) / 1e9)
