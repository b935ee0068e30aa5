"""Runs a plan as an Apache Beam pipeline (``--runner beam``).

The pipeline does what the local runner does, case by case: the same
``process_case`` decodes and validates the images, the same ``encode_case``
builds the Example, and ``WriteToTFRecord`` writes ``<split>-SSSSS-of-NNNNN.tfrecord``
with the plan's shard count. What the driver needs for dataset.json, the subsets
and skipped.csv comes back as small JSON lines. DirectRunner by default; any other
runner through ``--beam-args``.

Paths: the shards and the JSON lines are written through Beam's FileSystems (its
``WriteToTFRecord`` / ``WriteToText``; ``gs://`` needs ``apache-beam[gcp]``) and the
driver reads the lines back through them; the workers read the images through
tf.io.gfile (tfmicle.fileio, the local runner's reader: TensorFlow is on every worker
for ``encode_case`` and knows ``gs://``). So with ``--input`` / ``--images``
/ ``--out`` in a bucket, Dataflow workers read and write the bucket; with local paths the
workers must share the filesystem. ``ram://`` (one process) is refused.

Apache Beam is an optional extra: ``pip install 'tfmicle[beam]'``.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Sequence

from data_prep.cases import CaseSpec, ImageRef, Skip, process_case
from data_prep.errors import UserError
from data_prep.local_runner import CaseSummary, RunResult
from data_prep.plan import Plan
from tfmicle.imagefiles import ImageOptions
from tfmicle import fileio

log = logging.getLogger(__name__)
_SIDE = ".beam"


def _case_to_json(split: str, case: CaseSpec) -> str:
    return json.dumps({
        "split": split, "case_id": case.case_id, "patient_id": case.patient_id,
        "images": [[r.path, r.image_id, r.view, r.missing, r.meta] for r in case.images],
        "near_pairs": case.near_pairs,
        "label_class": case.label_class,
        "label_multi": None if case.label_multi is None else
        [None if math.isnan(v) else v for v in case.label_multi],
        "source_split": case.source_split})


def _case_from_json(text: str) -> tuple[str, CaseSpec]:
    d = json.loads(text)
    multi = None if d["label_multi"] is None else \
        [math.nan if v is None else float(v) for v in d["label_multi"]]
    return d["split"], CaseSpec(d["case_id"], d["patient_id"],
                                [ImageRef(*r) for r in d["images"]], d["label_class"], multi,
                                d["source_split"],
                                near_pairs=[tuple(p) for p in d.get("near_pairs", [])])


def _process(text: str, options: ImageOptions):
    """One case -> ('record', (split, bytes)), ('summary', json), ('skipped', json)..."""
    from tfmicle.data.records import encode_case

    split, case = _case_from_json(text)
    res = process_case(case, options)
    for s in res.skipped:
        yield "skipped", json.dumps(s.as_row())
    if res.images:
        ex = encode_case(case.case_id, res.images, res.image_ids, case.patient_id,
                         res.views or None, case.label_class, case.label_multi,
                         case.meta_keys, res.meta, res.near_pairs)
        yield "record", (split, ex.SerializeToString(deterministic=True))
        yield "summary", json.dumps({
            "case_id": case.case_id, "patient_id": case.patient_id, "split": split,
            "image_ids": res.image_ids, "label_class": case.label_class,
            "label_multi": None if case.label_multi is None else
            [None if math.isnan(v) else v for v in case.label_multi]})


def _read_lines(prefix: str) -> list[str]:
    """The lines of the files WriteToText wrote at ``prefix``, through Beam's FileSystems."""
    from apache_beam.io.filesystems import FileSystems

    lines = []
    found = FileSystems.match([prefix + "*"])[0].metadata_list
    for path in sorted(m.path for m in found):
        with FileSystems.open(path) as f:
            text = f.read().decode("utf-8")
        lines.extend(line for line in text.split("\n") if line.strip())
    return lines


def run_beam(plan: Plan, staging: str, options: ImageOptions,
             beam_args: Sequence[str] = ()) -> RunResult:
    fileio.check_shared(staging, "--runner beam")
    try:
        import apache_beam as beam
        from apache_beam import pvalue
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise UserError("--runner beam needs Apache Beam: pip install 'tfmicle[beam]' "
                        "(apache-beam[tfrecord])") from None

    splits = [sp for sp in plan.splits.values() if sp.cases]
    index = {sp.name: i for i, sp in enumerate(splits)}
    items = [_case_to_json(sp.name, c) for sp in splits for c in sp.cases]
    side = fileio.join(staging, _SIDE)
    fileio.makedirs(side)
    try:
        popts = PipelineOptions(list(beam_args))
    except Exception as e:
        raise UserError(f"--beam-args: {e}") from None
    log.info("beam: %d cases in %d split(s), options %s", len(items), len(splits),
             " ".join(beam_args) or "(DirectRunner)")

    def tagged(text):
        for tag, value in _process(text, options):
            yield pvalue.TaggedOutput(tag, value)

    with beam.Pipeline(options=popts) as p:
        out = (p
               | "Cases" >> beam.Create(items, reshuffle=True)
               | "Process" >> beam.FlatMap(tagged).with_outputs("record", "summary", "skipped"))
        parts = out.record | "BySplit" >> beam.Partition(
            lambda kv, n: index[kv[0]], len(splits))
        for sp, part in zip(splits, parts):
            (part
             | f"Bytes[{sp.name}]" >> beam.Map(lambda kv: kv[1])
             | f"Write[{sp.name}]" >> beam.io.WriteToTFRecord(
                 fileio.join(staging, sp.name), num_shards=sp.num_shards,
                 shard_name_template="-SSSSS-of-NNNNN", file_name_suffix=".tfrecord"))
        out.summary | "WriteSummary" >> beam.io.WriteToText(fileio.join(side, "summary"))
        out.skipped | "WriteSkipped" >> beam.io.WriteToText(fileio.join(side, "skipped"))

    cases = []
    for line in _read_lines(fileio.join(side, "summary")):
        d = json.loads(line)
        multi = None if d["label_multi"] is None else \
            [math.nan if v is None else float(v) for v in d["label_multi"]]
        cases.append(CaseSummary(d["case_id"], d["patient_id"], d["split"], "",
                                 d["image_ids"], d["label_class"], multi))
    skipped = sorted((Skip(*json.loads(line)) for line in
                      _read_lines(fileio.join(side, "skipped"))),
                     key=lambda s: (s.case_id, s.path))
    fileio.rmtree(side, ignore_errors=True)
    order = {c.case_id: i for i, c in enumerate(c for sp in splits for c in sp.cases)}
    cases.sort(key=lambda c: order.get(c.case_id, -1))
    return RunResult(cases, skipped)
