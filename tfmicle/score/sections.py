"""Scoring: the sections of the result, each with one interface (evaluator style). A
section computes from the scored runs (their predictions) and gives its part of each
run's metrics.json and of score()'s result, its lines of report.md, and optionally lines
for the report's top. The sections: metrics, calibration, provenance (which source and
model the numbers are of: metrics.json only), subgroups, shift, explanations. job.py
calls them in fixed, explicit lists: per run in metrics.json's key order (score_one),
then those that span the runs, and report.md's order. Map: docs/architecture.md."""
from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

from tfmicle import fileio
from tfmicle.score import calib, explain, report
from tfmicle.score.model import ScoringModel
from tfmicle.score.options import ScoreOptions
from tfmicle.score.report import Scored

log = logging.getLogger("tfmicle.score")


@dataclass(frozen=True)
class Job:
    """What every section reads: the model, the options (auc_classes resolved to the
    model's classes when not given), the job's output folder."""
    model: ScoringModel
    options: ScoreOptions
    out_dir: str

    @property
    def auc_classes(self) -> list[str]:
        return list(self.options.auc_classes or self.model.class_names)


@dataclass
class Part:
    """What one section computed: per run name, its keys of that run's metrics.json
    (added in order); entries of score()'s result."""
    metrics: dict[str, dict] = field(default_factory=dict)
    result: dict = field(default_factory=dict)


class Section(ABC):
    """One section of the result; built per job, computed once, then asked for lines."""

    def __init__(self, job: Job):
        self.job = job

    @abstractmethod
    def compute(self, runs: Sequence[Scored]) -> Part:
        """Its numbers, from the runs' predictions (and earlier sections' keys in each
        run's metrics, None for a run without labels)."""

    def lead(self, runs: Sequence[Scored]) -> list[str]:
        """Lines for the top of report.md (what a reviewer reads first)."""
        return []

    def lines(self, runs: Sequence[Scored], figures: dict) -> list[str]:
        """Its lines of report.md (figures: {kind: path} of the figures written)."""
        return []


def _arrays(run: Scored):
    """(probabilities float64 [M, K] as written, labels [M], case ids [M]) of a run."""
    import numpy as np
    src, pred = run.pred.source, run.pred
    return (pred.probs.astype(np.float64), np.asarray(src.labels)[pred.rows],
            [src.case_ids[r] for r in pred.rows])


class Metrics(Section):
    """tfmicle.metrics.evaluate at image and case level with bootstrap CIs; only a run
    with labels gets metrics (and so a metrics.json)."""

    def compute(self, runs):
        from tfmicle import metrics as M
        job, part = self.job, Part()
        for run in runs:
            probs, labels, case_ids = _arrays(run)
            if len(labels) and M.has_labels(job.model.task, labels):
                # The metrics see exactly the probabilities written (float32 -> float64).
                part.metrics[run.name] = M.evaluate(
                    job.model.task, probs, labels, case_ids, job.model.class_names,
                    job.auc_classes, job.options.replicates, job.options.seed)
            else:
                log.info("%s: none of the %d scored images has a label: predictions only "
                         "(no metrics.json)", run.pred.source.spec, len(run.pred.rows))
        return part

    def lines(self, runs, figures):
        return report.metrics_lines(self.job.model, list(runs), self.job.auc_classes)


class Calibration(Section):
    """ECE, Brier, NLL (calib.py) under "calibration"; reliability.png in the report."""

    def compute(self, runs):
        o = self.job.options
        return Part({r.name: {"calibration": calib.evaluate(self.job.model, *_arrays(r),
                                                            o.replicates, o.seed)}
                     for r in runs if r.metrics})

    def lines(self, runs, figures):
        return calib.section(self.job.model, list(runs), figures.get("reliability"))


class Provenance(Section):
    """Which source and model the numbers are of (metrics.json only)."""

    def compute(self, runs):
        m = self.job.model
        return Part({r.name: {"source": r.pred.source.spec, "num_skipped": len(r.pred.skipped),
                              "model": m.path, "model_version": m.version}
                     for r in runs if r.metrics})


class SubgroupMetrics(Section):
    """--subgroups: metrics per patient group (subgroups.py); the largest gap leads the
    report."""

    def compute(self, runs):
        from tfmicle.score.subgroups import subgroup_metrics
        want, o, model = self.job.options.subgroups, self.job.options, self.job.model
        part = Part()
        if not (want and want.names):
            return part
        for r in runs:
            if not r.metrics:
                continue
            probs, labels, case_ids = _arrays(r)
            columns, meta = r.pred.source.metadata()
            part.metrics[r.name] = {
                "subgroups": subgroup_metrics(
                    model.task, probs, labels, case_ids, [meta[i] for i in r.pred.rows],
                    columns, model.class_names, want, self.job.auc_classes, o.replicates,
                    o.seed),
                "age_bands": want.age_edges or "decades"}
        return part

    def lead(self, runs):
        from tfmicle.score.subgroups import flag_lines
        return [ln for r in runs
                for ln in flag_lines((r.metrics or {}).get("subgroups") or {}, r.name)]

    def lines(self, runs, figures):
        from tfmicle.score.subgroups import report_lines
        return [ln for r in runs if (r.metrics or {}).get("subgroups")
                for ln in report_lines(r.metrics["subgroups"], self.job.model.task, r.name)]


class Shift(Section):
    """--compare: primary vs compare at case level (shift.py), into shift.json."""
    FILE = "shift.json"

    def __init__(self, job: Job, summary: dict | None = None):
        super().__init__(job)
        self.summary = summary

    def compute(self, runs):
        from tfmicle import metrics as M
        from tfmicle.score.shift import shift_summary
        if not (len(runs) == 2 and all(r.metrics for r in runs)):
            return Part()
        o, model = self.job.options, self.job.model
        self.summary = shift_summary(model.task, model.class_names, _arrays(runs[0]),
                                     _arrays(runs[1]), self.job.auc_classes, o.replicates,
                                     o.seed)
        fileio.write_text(fileio.join(self.job.out_dir, self.FILE),
                          json.dumps(M.to_json_safe(self.summary), indent=2))
        return Part(result={"shift": self.summary})

    def lines(self, runs, figures):
        from tfmicle.score.shift import report_lines
        if not self.summary:
            return []
        return report_lines(self.summary, self.job.model.class_names, self.job.model.task)


class Explanations(Section):
    """--explain N: Grad-CAM overlays of each labelled run (explain.py)."""

    def __init__(self, job: Job):
        super().__init__(job)
        self.explained: dict[str, dict] = {}

    def compute(self, runs):
        n = self.job.options.explain
        self.explained = {r.name: explain.explain(self.job.model, r, n)
                          for r in runs if n and r.metrics}
        for r in runs:
            if self.explained.get(r.name, {}).get("csv"):
                r.files["explanations"] = self.explained[r.name]["csv"]
        return Part(result={"explanations": {k: v["items"]
                                             for k, v in self.explained.items()}})

    def lines(self, runs, figures):
        return explain.section(list(runs), self.explained, self.job.out_dir)


def apply(part: Part, runs: Sequence[Scored], result: dict | None = None) -> None:
    """Adds a section's keys to each run's metrics (a run gets metrics from the first
    section that gives it keys) and its entries to result."""
    for r in runs:
        if part.metrics.get(r.name):
            r.metrics = {**(r.metrics or {}), **part.metrics[r.name]}
    if result is not None:
        result.update(part.result)


__all__ = ["Job", "Part", "Section", "Metrics", "Calibration", "Provenance", "SubgroupMetrics",
           "Shift", "Explanations", "apply"]
