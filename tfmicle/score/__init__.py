"""`python -m tfmicle.score`: batch-score held-out data with an exported SavedModel and
write predictions, metrics and a report.

    python -m tfmicle.score --model MODELS/<name>[/<version>] --data SRC --out DIR \\
        [--split test] [--compare SRC2 [--compare-split S]] [--format csv|parquet] \\
        [--subgroups sex,age_band,site [--age-bands 0,40,60]] [--explain N] \\
        [--runner local|beam [--beam-args="--runner=DataflowRunner ..."]]

SRC is one of
- a records folder (a data_prep output, dataset.json inside): one split (--split);
- a folder of images (searched recursively); an image inside a first-level folder
  named like a model class is labeled with that class;
- a CSV manifest: column ``image`` (path, relative to the CSV's folder or --images),
  optional ``case_id`` (default: the image), optional ``label`` (a class name) for a
  multi-class model, or one column per class (1 / 0 / -1 / blank) for a multi-label one.

DIR gets predictions_images.csv (one row per image: ids, label, predicted class,
prob_<class>...), predictions_cases.csv (the mean of the image probabilities of each
case), skipped.csv (images that could not be read or decoded: listed, never fatal),
metrics.json when labels exist (tfmicle.metrics.evaluate: image and case level, bootstrap
95 % CIs resampling cases), and report.md with roc.png, pr.png (case and image level)
and confusion.png (counts and rows normalised).
--compare SRC2 scores a second dataset (e.g. an external test set) into DIR/compare/
and puts it beside the first in report.md and the figures, with a distribution-shift
section (shift.py: prevalence, metric drops with bootstrap CIs, ECE) and shift.json.
predictions_images.csv carries each image's metadata as meta_<column> (records schema
v2, extra CSV columns); --subgroups reports metrics per patient group (subgroups.py)
and flags the largest gap at the top of report.md.
metrics.json and report.md include calibration (ECE over 15 bins with a case-bootstrap
CI, Brier, NLL; reliability.png). --explain N writes Grad-CAM overlays of the N most
confident errors and correct predictions (DIR/explain/) into the report.
--similar INDEX [--similar-k K] reports how often the K nearest cases of a case index
(built by ``python -m tfmicle.index`` with this model version; similar.py) share each
held-out case's class, per class and beside chance; index.py is that tool's library.

Scoring preprocesses in tf.data with tfmicle's one eval preprocessing (the same
function the exported graph runs), in parallel with the model, and calls the model's
``predict_preprocessed``; a SavedModel without it (any model that follows the serving
contract) is called through ``serving_default`` with the encoded images.
``--runner beam`` predicts with an Apache Beam pipeline (RunInference; beam.py, the
optional ``tfmicle[beam]`` extra) and writes the same files from the same code.

Modules: model (the exported model as the scorer sees it), options (ScoreOptions),
source_base (the Source interface), sources (open_source), source_files and source_records (the four
sources), predict, sections (metrics, calibration, provenance, subgroups, shift,
explanations: one interface), report, figures, subgroups, shift, calib (the calibration
section), explain (--explain), beam and beam_rows (--runner beam), job (the whole job:
``score()``), cli. Map of the code: docs/architecture.md.
"""
from __future__ import annotations

from tfmicle.score.cli import main
from tfmicle.score.job import score, score_one
from tfmicle.score.model import ScoreError, load_model
from tfmicle.score.options import ScoreOptions
from tfmicle.score.sources import open_source

__all__ = ["main", "score", "score_one", "ScoreOptions", "load_model", "open_source",
           "ScoreError"]
