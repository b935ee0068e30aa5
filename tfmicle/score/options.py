"""Scoring: the options of one job (``score(model_path, data, out_dir, options)``), as
the CLI's flags set them; everything but the model, the data and the output folder.
Map: docs/architecture.md."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from tfmicle.score.subgroups import Subgroups

FORMATS = ("csv", "parquet")
RUNNERS = ("local", "beam")   # beam: tfmicle.score.beam (the optional apache-beam extra)

# progress(total images, run name) -> callback(images done), with an optional .close()
ProgressFactory = Callable[[int, str], Callable[[int], None]]


@dataclass(frozen=True)
class ScoreOptions:
    """How to score; the defaults are the CLI's."""
    split: str | None = None            # records / TFDS split of --data (None: test)
    compare: str | None = None          # a second source, scored into <out>/compare/
    compare_split: str | None = None    # its split (None: split)
    format: str = "csv"                 # prediction tables: csv | parquet (skipped.csv: csv)
    batch_size: int = 64                # images per model call
    replicates: int = 1000              # bootstrap replicates of the 95 % CIs (0: none)
    seed: int = 0                       # bootstrap seed
    auc_classes: Sequence[str] | None = None   # classes of the mean AUC (None: all)
    images_root: str | None = None      # folder a CSV manifest's paths are relative to
    report: bool = True                 # report.md and its figures
    progress: ProgressFactory | None = field(default=None, compare=False)
    subgroups: Subgroups | None = None  # metrics per patient subgroup (subgroups.py)
    explain: int = 0                    # Grad-CAM overlays of the N most confident errors
                                        # and correct predictions (serving_explain)
    tfds_options: Mapping[str, str] | None = None  # tfds:NAME sources: TfdsSource fields
                                        # (image_key, label_key, case_key, data_dir, manual_dir)
    runner: str = "local"               # local (this process) | beam (beam.py)
    beam_args: Sequence[str] = ()       # Beam pipeline options (runner beam only)
    model_card: bool = False            # a copy of the version's model card with the
                                        # held-out results added (card.py), into the output
    similar: str | None = None          # a case index: precision@k of its nearest cases (similar.py)
    similar_k: int = 5                  # k of --similar


__all__ = ["ScoreOptions", "ProgressFactory", "FORMATS", "RUNNERS"]
