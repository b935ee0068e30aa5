"""What a case is before it becomes a record, and turning one into encoded images.

Plain data and no TensorFlow: these objects travel to worker processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from tfmicle.imagefiles import ImageError, ImageOptions, load_image

UNLABELED = -1


@dataclass
class ImageRef:
    path: str                   # file to read ('' when the manifest could not locate it)
    image_id: str               # source image id / relative path, written to image/id
    view: str = ""
    missing: str = ""           # reason, when known missing at manifest time
    meta: dict[str, str] = field(default_factory=dict)   # metadata column -> source text


@dataclass
class CaseSpec:
    case_id: str
    patient_id: str
    images: list[ImageRef] = field(default_factory=list)
    label_class: int = UNLABELED
    label_multi: list[float] | None = None
    source_split: str | None = None
    split_group: str = ""           # patients drawn into one split together ('' : the patient)
    near_pairs: list[tuple[str, str]] = field(default_factory=list)  # near-identical image ids

    @property
    def group(self) -> str:
        """What the split is drawn for: the split group, else the patient."""
        return self.split_group or self.patient_id

    @property
    def meta_keys(self) -> list[str]:
        """Metadata columns of the case's images (union, first-seen order)."""
        return list(dict.fromkeys(k for r in self.images for k in r.meta))

    @property
    def labeled(self) -> bool:
        if self.label_multi is not None:
            return any(not math.isnan(v) for v in self.label_multi)
        return self.label_class >= 0


@dataclass
class Skip:
    """One line of skipped.csv."""
    path: str
    reason: str
    image_id: str = ""
    case_id: str = ""
    # A copy of an image of the same patient, dropped: nothing is lost, so --strict,
    # which refuses losing images, lets it pass (it still refuses cross-patient copies).
    harmless: bool = False

    def as_row(self) -> list[str]:
        return [self.path, self.reason, self.image_id, self.case_id]

    def strict_message(self) -> str:
        """The one line ``--strict`` fails with: the file, the image and case ids, why."""
        what = self.path or "(no file)"
        ids = [f"image {self.image_id!r}" if self.image_id and self.image_id != self.path
               else "", f"case {self.case_id!r}" if self.case_id else ""]
        ids = [i for i in ids if i]
        return f"--strict: {what}{' (' + ', '.join(ids) + ')' if ids else ''}: {self.reason}"


SKIPPED_COLUMNS = ["path", "reason", "image_id", "case_id"]


@dataclass
class CaseResult:
    """The encoded images of a case that survived, and the ones that did not."""
    images: list[bytes]
    image_ids: list[str]
    views: list[str]
    skipped: list[Skip]
    meta: list[list[str]] = field(default_factory=list)   # per kept image, CaseSpec.meta_keys
    near_pairs: list[tuple[int, int]] = field(default_factory=list)  # kept-image indices


def process_case(case: CaseSpec, options: ImageOptions) -> CaseResult:
    images, ids, views, skipped, meta = [], [], [], [], []
    keys = case.meta_keys
    for ref in case.images:
        if ref.missing:
            skipped.append(Skip(ref.path or ref.image_id, ref.missing, ref.image_id, case.case_id))
            continue
        try:
            enc = load_image(ref.path, options)
        except ImageError as e:
            skipped.append(Skip(ref.path, str(e), ref.image_id, case.case_id))
            continue
        except Exception as e:      # a decoder bug on one odd file must not stop the run
            skipped.append(Skip(ref.path, f"error: {type(e).__name__}: {e}", ref.image_id,
                                case.case_id))
            continue
        images.append(enc.data)
        ids.append(ref.image_id)
        views.append(ref.view)
        meta.append([ref.meta.get(k, "") for k in keys])
    if not any(views):
        views = []
    index = {i: n for n, i in enumerate(ids)}
    pairs = [(index[a], index[b]) for a, b in case.near_pairs if a in index and b in index]
    return CaseResult(images, ids, views, skipped, meta if keys else [], pairs)


def process_chunk(chunk: list[tuple[int, CaseSpec]], options: ImageOptions
                  ) -> list[tuple[int, CaseResult]]:
    """Worker entry point: a chunk of (plan index, case)."""
    return [(i, process_case(c, options)) for i, c in chunk]
