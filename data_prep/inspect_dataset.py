"""``python -m data_prep inspect OUT``: the summary of a dataset, and a check that
every shard parses and agrees with dataset.json."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from tfmicle import fileio
from tfmicle.tasks import MULTICLASS

log = logging.getLogger(__name__)


@dataclass
class Inspection:
    info: dict
    lines: list[str] = field(default_factory=list)      # the report
    problems: list[str] = field(default_factory=list)   # empty: the dataset is sound

    @property
    def ok(self) -> bool:
        return not self.problems


def _histogram(hist: dict[int, int], width: int = 40) -> list[str]:
    if not hist:
        return ["    (no cases)"]
    top = max(hist.values())
    return [f"    {k:>4} image{'s' if k != 1 else ' '} {v:>9}  {'#' * max(1, round(width * v / top))}"
            for k, v in sorted(hist.items())]


def inspect_dataset(out: str, decode_images: bool = False) -> Inspection:
    """Reads dataset.json and every shard; raises FileNotFoundError without dataset.json.

    Damage (an unreadable or malformed dataset.json, a shard that is a folder or does not
    parse, a bad subset file) becomes a problem line, never an exception."""
    from tfmicle.data.records import DATASET_JSON, load_dataset_info

    try:
        info = load_dataset_info(out)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:              # JSONDecodeError is a ValueError
        r = Inspection({})
        r.lines.append(f"dataset {fileio.abspath(out)}")
        r.problems.append(f"{DATASET_JSON}: unreadable: {type(e).__name__}: {e}")
        r.lines.append(f"{len(r.problems)} problem(s)")
        return r
    r = Inspection(info if isinstance(info, dict) else {})
    if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
        r.lines.append(f"dataset {fileio.abspath(out)}")
        r.problems.append(f"{DATASET_JSON}: not a data_prep dataset description (no 'splits' "
                          "object)")
        r.lines.append(f"{len(r.problems)} problem(s)")
        return r
    try:
        _inspect(out, info, r, decode_images)
    except Exception as e:      # malformed fields: report, never a traceback
        r.problems.append(f"{DATASET_JSON}: malformed: {type(e).__name__}: {e}")
    r.lines.append("OK: every shard parses and matches dataset.json" if r.ok else
                   f"{len(r.problems)} problem(s)")
    return r


def _inspect(out: str, info: dict, r: Inspection, decode_images: bool) -> None:
    import tensorflow as tf
    from tfmicle.data.records import READABLE_VERSIONS, decode_case, read_subset

    src = info.get("source", {})
    r.lines.append(f"dataset {fileio.abspath(out)}")
    r.lines.append(f"  schema v{info.get('schema_version')}, task {info.get('task')}, "
                   f"{len(info.get('class_names', []))} classes: "
                   f"{', '.join(info.get('class_names', []))}")
    r.lines.append(f"  source {src.get('format')} {src.get('manifest')} "
                   f"(sha256 {str(src.get('sha256'))[:12]}...)")
    if info.get("metadata_columns"):
        r.lines.append(f"  metadata per image: {', '.join(info['metadata_columns'])}")
    r.lines.append(f"  split seed {info.get('split_seed')}, fractions {info.get('split_fractions')}"
                   f", skipped {info.get('skipped')} {info.get('skipped_reasons', {})}")
    if info.get("schema_version") not in READABLE_VERSIONS:
        r.problems.append(f"schema version {info.get('schema_version')} is not one of "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
    seen_patients: dict[str, str] = {}
    for split, s in info.get("splits", {}).items():
        hist: Counter = Counter()
        cases = images = 0
        ids = set()
        for shard in s.get("shards", []):
            path = fileio.join(out, shard)
            if not fileio.isfile(path):
                r.problems.append(f"{shard}: listed in dataset.json but "
                                  f"{'not a file' if fileio.exists(path) else 'missing'}")
                continue
            try:
                for rec in tf.data.TFRecordDataset(path):
                    c = decode_case(rec.numpy())
                    cases += 1
                    images += len(c.images)
                    hist[len(c.images)] += 1
                    ids.add(c.case_id)
                    prev = seen_patients.setdefault(c.patient_id, split)
                    if prev != split:
                        r.problems.append(f"patient {c.patient_id} in splits {prev} and {split}")
                    if len(c.image_ids) != len(c.images):
                        r.problems.append(f"{shard}: case {c.case_id}: image ids != images")
                    if decode_images:
                        _check_images(c, shard, r.problems)
            except Exception as e:      # DataLossError, a record that is not a case, ...
                r.problems.append(f"{shard}: does not parse: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}")
        if cases != s.get("cases") or images != s.get("images"):
            r.problems.append(f"split {split}: shards hold {cases} cases / {images} images, "
                              f"dataset.json says {s.get('cases')} / {s.get('images')}")
        r.lines.append(f"  {split}: {cases} cases, {images} images, {s.get('patients', '?')} "
                       f"patients, {len(s.get('shards', []))} shard(s); unlabeled cases "
                       f"{s.get('unlabeled_cases', 0)}")
        lc = s.get("label_counts", {})
        if info.get("task") == MULTICLASS:
            r.lines.append("    labels: " + ", ".join(f"{k} {v}" for k, v in lc.items()))
        else:
            r.lines.append("    positives: " + ", ".join(f"{k} {v.get('positive', 0)}"
                                                        for k, v in lc.items()))
        r.lines.append("    images per case:")
        r.lines.extend(_histogram(dict(hist)))
        for frac, sub in info.get("subsets", {}).get(split, {}).items():
            try:
                sub_ids = read_subset(out, split, float(frac))
            except (OSError, ValueError, UnicodeDecodeError) as e:
                r.problems.append(f"subset {split} {frac}: unreadable: {e}")
                continue
            outside = [i for i in sub_ids if i not in ids]
            if outside:
                r.problems.append(f"subset {split} {frac}: {len(outside)} ids not in the split")
            r.lines.append(f"    subset {float(frac) * 100:g}%: {len(sub_ids)} cases")


def _check_images(case, shard: str, problems: list[str]) -> None:
    """Each image must be JPEG or PNG and decode with TensorFlow's decoder, the one
    training uses (data_prep checks the same way before writing)."""
    from tfmicle.imagefiles import PASSING, decode_error, sniff
    for img_id, data in zip(case.image_ids, case.images):
        kind = sniff(data)
        if kind is None or not kind.passes:
            problems.append(f"{shard}: {case.case_id}/{img_id}: not {'/'.join(PASSING)}")
            continue
        err = decode_error(data, full=True)
        if err:
            problems.append(f"{shard}: {case.case_id}/{img_id}: does not decode ({err})")
