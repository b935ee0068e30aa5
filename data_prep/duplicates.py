"""Duplicate images in a manifest: one file reached twice (a symlink, a file listed in
two rows) or the same bytes under two names (ISIC 2019/2020 hold such copies).

The first copy in manifest order is kept; every later one is dropped from its case and
listed in skipped.csv. When a copy belongs to another patient than the kept one, the two
patients are very likely one person, so their cases are put in one split group (the
split is drawn once for the group) and the dataset cannot hold the same image, or the
same person, in two splits. A case left without images disappears (its images are all
in skipped.csv). ``--strict`` fails on the first copy across patients instead (a copy
within one patient loses nothing and passes).
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from data_prep.cases import CaseSpec, Skip
from data_prep.manifest import Manifest
from tfmicle import fileio

log = logging.getLogger(__name__)


@dataclass
class DuplicateStats:
    same_file: int = 0          # one file reached by two paths or listed twice
    same_content: int = 0       # identical bytes under two names
    cross_patient: int = 0      # copies whose patient differs from the kept copy's
    merged_patients: int = 0    # patients that now share a split group with another
    unmerged: int = 0           # cross-patient pairs kept apart by their source splits

    def as_dict(self) -> dict:
        return asdict(self)


def content_hash(path: str) -> str | None:
    """SHA-256 of a file's bytes; None when it cannot be read (a worker reports it)."""
    h = hashlib.sha256()
    try:
        with fileio.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except Exception:       # OSError locally, tf.errors.OpError from a URL's reads
        return None
    return h.hexdigest()


def hash_files(paths: list[str], threads: int = 8) -> dict[str, str | None]:
    """path -> content hash; hashlib and file reads release the GIL, so threads suffice."""
    unique = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return dict(zip(unique, pool.map(content_hash, unique)))


class _Groups:
    """Union-find over patient ids; a group is named by its smallest id (order-free)."""

    def __init__(self, source_split: dict[str, str | None]):
        self.parent: dict[str, str] = {}
        self.split = dict(source_split)             # root -> the group's source split

    def find(self, p: str) -> str:
        self.parent.setdefault(p, p)
        while self.parent[p] != p:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        return p

    def union(self, a: str, b: str) -> bool:
        """False (and no merge) when the two groups have different source splits."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        sa, sb = self.split.get(ra), self.split.get(rb)
        if sa and sb and sa != sb:
            return False
        root, child = (ra, rb) if ra < rb else (rb, ra)
        self.parent[child] = root
        self.split[root] = sa or sb
        return True


def remove_duplicates(manifest: Manifest, threads: int = 8) -> DuplicateStats:
    """Drops every later copy of an image from ``manifest`` (in place), lists it in
    ``manifest.skipped`` and sets ``split_group`` on the cases of merged patients."""
    refs = [(case, ref) for case in manifest.cases for ref in case.images
            if ref.path and not ref.missing]
    hashes = hash_files([r.path for _, r in refs], threads)
    stats = DuplicateStats()
    groups = _Groups({c.patient_id: c.source_split for c in manifest.cases})
    by_file: dict[str, tuple[CaseSpec, str]] = {}
    by_content: dict[str, tuple[CaseSpec, str]] = {}
    drop: set[int] = set()
    for case, ref in refs:
        real = fileio.realpath(ref.path)
        digest = hashes.get(ref.path)
        first, kind = by_file.get(real), "file"
        if first is None and digest is not None:
            first, kind = by_content.get(digest), "content"
        if first is None:
            by_file[real] = (case, ref.path)
            if digest is not None:
                by_content[digest] = (case, ref.path)
            continue
        kept_case, kept_path = first
        drop.add(id(ref))
        if kind == "file":
            stats.same_file += 1
        else:
            stats.same_content += 1
        where = f"case {kept_case.case_id!r}"
        if kept_case.patient_id != case.patient_id:
            stats.cross_patient += 1
            where += f", patient {kept_case.patient_id!r}"
            if not groups.union(kept_case.patient_id, case.patient_id):
                stats.unmerged += 1
                log.warning("duplicate %s of %s: patients %r and %r have different source "
                            "splits; the copy is dropped, the patients stay apart",
                            ref.path, kept_path, case.patient_id, kept_case.patient_id)
        manifest.skipped.append(Skip(ref.path, f"duplicate: same {kind} as {kept_path} "
                                               f"({where})", ref.image_id, case.case_id,
                                     harmless=kept_case.patient_id == case.patient_id))
    if not drop:
        return stats
    for case in manifest.cases:
        case.images = [r for r in case.images if id(r) not in drop]
    manifest.cases = [c for c in manifest.cases if c.images]
    members: dict[str, set[str]] = {}
    for case in manifest.cases:
        members.setdefault(groups.find(case.patient_id), set()).add(case.patient_id)
    for case in manifest.cases:
        root = groups.find(case.patient_id)
        if len(members[root]) > 1:
            case.split_group = root
    stats.merged_patients = sum(len(m) for m in members.values() if len(m) > 1)
    log.info("duplicates: %d same file, %d same content (%d across patients; %d patients "
             "put in shared split groups): the copies are in skipped.csv",
             stats.same_file, stats.same_content, stats.cross_patient, stats.merged_patients)
    return stats
