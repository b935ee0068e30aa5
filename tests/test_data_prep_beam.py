"""--runner beam writes the same cases, images and labels as the local runner.

apache-beam[tfrecord] pins protobuf < 7, so it lives in its own environment: setup.sh
creates .venv-beam (tfmicle[beam]); the test runs `python -m data_prep --runner beam`
with that interpreter (or in-process where apache_beam is importable here), and the
local runner in this environment, then compares the two outputs.
"""
from __future__ import annotations

import csv
import io
import math
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import beam_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BEAM_PYTHON = beam_python()
if BEAM_PYTHON is None:
    pytest.skip("no Beam environment: run setup.sh (creates .venv-beam) or set "
                "TFMICLE_BEAM_PYTHON", allow_module_level=True)

from data_prep.convert import ConvertConfig, convert        # noqa: E402
from data_prep.manifest import CsvColumns, FormatOptions    # noqa: E402
from tfmicle.data import records                             # noqa: E402


def _write_jpeg(path, seed, size=32):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG")


def _dataset(root):
    rows = []
    for i in range(24):
        rel = f"img/{i:03d}.jpg"
        _write_jpeg(root / rel, i, size=48 if i % 5 == 0 else 32)   # some get resized
        case = f"c{i // 3}"
        rows.append([rel, case, f"p{i // 6}", ["a", "b", "c"][(i // 3) % 3],
                     ["arm", "leg"][i % 2], str(20 + i)])
    (root / "img" / "007.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    rows.append(["img/none.jpg", "c99", "p99", "a", "", ""])
    with open(root / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "case", "patient", "dx", "site", "age"])
        w.writerows(rows)
    return root / "m.csv"


def _content(out):
    info = records.load_dataset_info(str(out))
    got = set()
    for split, s in info["splits"].items():
        if s["cases"]:
            for c in records.iter_cases(str(out), split):
                got.add((split, c.case_id, c.patient_id, tuple(c.image_ids), tuple(c.images),
                         c.label_class, tuple(0.0 if math.isnan(v) else v for v in c.label_multi),
                         tuple(tuple(sorted(m.items())) for m in c.meta)))
    with open(os.path.join(out, "skipped.csv")) as f:
        skipped = sorted(tuple(r) for r in csv.reader(f))
    subsets = {f: records.read_subset(str(out), "train", f) for f in info["label_fractions"]}
    return info, got, skipped, subsets


@pytest.mark.beam
def test_beam_and_local_runners_write_the_same_cases(tmp_path):
    manifest = _dataset(tmp_path)
    opts = FormatOptions(columns=CsvColumns(image="path", case="case", patient="patient",
                                            label="dx", meta=["site", "age"]))
    common = dict(format="csv", input=str(manifest), format_options=opts, shard_mb=0.005,
                  label_fractions=[0.1, 0.5, 1.0])
    from tfmicle.imagefiles import ImageOptions
    io_opts = ImageOptions(max_side=40)
    convert(ConvertConfig(out=str(tmp_path / "local"), workers=1, image_options=io_opts,
                          **common))
    r = subprocess.run(
        [BEAM_PYTHON, "-m", "data_prep", "--format", "csv", "--input", str(manifest),
         "--image-col", "path", "--case-col", "case", "--patient-col", "patient",
         "--label-col", "dx", "--meta-cols", "site,age", "--shard-mb", "0.005", "--label-fractions", "0.1,0.5,1",
         "--max-side", "40", "--runner", "beam", "--no-progress",
         "--out", str(tmp_path / "beam")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    li, lc, ls, lsub = _content(tmp_path / "local")
    bi, bc, bs, bsub = _content(tmp_path / "beam")
    assert lc == bc and len(lc) > 5
    # schema v2 metadata per image, as the CSV has it (image 3 of the 24: arm / leg)
    meta = {i: dict(m) for *_, ids, _, _, _, metas in lc for i, m in zip(ids, metas)}
    assert meta["img/003.jpg"] == {"site": "leg", "age": "23"} and len(meta) == 23
    assert li["metadata_columns"] == bi["metadata_columns"] == ["site", "age"]
    assert ls == bs and len(ls) == 3               # header + corrupt + missing
    assert lsub == bsub
    for key in ("task", "class_names", "skipped", "split_fractions", "schema_version"):
        assert li[key] == bi[key]
    for split in li["splits"]:
        a, b = dict(li["splits"][split]), dict(bi["splits"][split])
        assert a == b, split                       # same counts and shard names
    resized = [img for *_, imgs, _, _, _ in lc for img in imgs
               if Image.open(io.BytesIO(img)).size == (40, 40)]
    assert resized                                  # the 48 px images went through resizing
