"""data_prep end to end: each source layout -> records, read back and compared with the
CSV the test wrote; skipped.csv accounting; --strict; --overwrite; inspect; the CLI.

Fixtures follow the published layouts (file names, headers, value formats) with tiny
generated 32 px images.

Over 400 lines on purpose: one fixture kit (image, DICOM and CSV writers, read-back
and skipped.csv accounting checks) serves one test per source layout and the CLI
tests; split per layout, each file would need the whole kit.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data_prep.__main__ import main
from data_prep.convert import ConvertConfig, convert
from data_prep.datasets import CHEXPERT_CLASSES
from data_prep.formats import FormatOptions
from tfmicle.data import records
from tfmicle.imagefiles import ImageOptions

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
ISIC19 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


# ----------------------------------------------------------------------------- helpers

def write_image(path, seed: int, size=(32, 32), mode="RGB", fmt="JPEG") -> bytes:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, fmt)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return buf.getvalue()


def write_truncated(path, seed: int) -> None:
    data = write_image(path, seed)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


def write_dicom(path, seed: int, photometric="MONOCHROME2") -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "OT", photometric, 1
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    px = np.random.default_rng(seed).integers(0, 4096, (32, 32)).astype("<u2")
    ds.PixelData = px.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_csv(path, header, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def run(fmt, inp, out, **kw):
    opts = kw.pop("format_options", FormatOptions())
    cfg = ConvertConfig(format=fmt, input=str(inp), out=str(out), format_options=opts,
                        workers=kw.pop("workers", 1), **kw)
    return convert(cfg)


def read_back(out) -> dict[str, tuple[str, records.Case]]:
    """case id -> (split, Case) for every record of every split in dataset.json."""
    info = records.load_dataset_info(str(out))
    got = {}
    for split, s in info["splits"].items():
        if not s["cases"]:
            continue
        for case in records.iter_cases(str(out), split):
            assert case.case_id not in got, f"case {case.case_id} written twice"
            got[case.case_id] = (split, case)
    return got


def skipped_rows(out) -> list[dict]:
    with open(os.path.join(out, "skipped.csv"), newline="") as f:
        return list(csv.DictReader(f))


def check_accounting(out, listed_ids, broken: dict[str, str]):
    """Every listed image is in exactly one record or in skipped.csv, never both; the
    skipped ones are exactly the broken ones, with the expected reason."""
    got = read_back(out)
    written = Counter(i for _, c in got.values() for i in c.image_ids)
    assert max(written.values()) == 1
    skipped = {r["image_id"]: r["reason"] for r in skipped_rows(out)}
    assert not set(written) & set(skipped)
    assert set(written) | set(skipped) == set(listed_ids)
    assert set(skipped) == set(broken)
    for i, reason in broken.items():
        assert skipped[i].startswith(reason), (i, skipped[i])
    info = records.load_dataset_info(str(out))
    assert info["skipped"] == len(broken)
    assert sum(s["images"] for s in info["splits"].values()) == sum(written.values())
    return got


def check_no_patient_leak(got):
    split_of = {}
    for split, c in got.values():
        assert split_of.setdefault(c.patient_id, split) == split, c.patient_id


# ----------------------------------------------------------------------------- fixtures

def make_ham10000(root, broken=True, lesions=14):
    """HAM10000_metadata.csv + HAM10000_images_part_1/2; lesions with 1-3 images."""
    rng = np.random.default_rng(1)
    rows, files, n = [], {}, 0
    for lesion in range(lesions):
        dx = HAM_CLASSES[lesion % 7]
        for _ in range(1 + lesion % 3):
            image_id = f"ISIC_{24300 + n:07d}"
            part = 1 if n % 2 == 0 else 2
            path = root / f"HAM10000_images_part_{part}" / f"{image_id}.jpg"
            files[image_id] = write_image(path, n)
            rows.append([f"HAM_{lesion:07d}", image_id, dx, "histo", 40 + n, "male", "back",
                         "vidir_modern"])
            n += 1
    bad = {}
    if broken:
        gone = rows[3][1]
        os.remove(root / "HAM10000_images_part_2" / f"{gone}.jpg")
        bad[gone] = "missing"
        trunc = rows[8][1]
        write_truncated(root / "HAM10000_images_part_1" / f"{trunc}.jpg", 99)
        bad[trunc] = "corrupt"
        garbage = rows[12][1]
        part = 1 if int(garbage[5:]) % 2 == 0 else 2
        (root / f"HAM10000_images_part_{part}" / f"{garbage}.jpg").write_bytes(
            np.random.default_rng(0).bytes(2000))
        bad[garbage] = "corrupt"
    write_csv(root / "HAM10000_metadata.csv",
              ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"],
              rows)
    return rows, files, bad


def test_ham10000_lesions_labels_and_accounting(tmp_path):
    rows, files, bad = make_ham10000(tmp_path / "ham")
    info = run("ham10000", tmp_path / "ham", tmp_path / "out")
    assert info["task"] == "multiclass" and info["class_names"] == HAM_CLASSES
    got = check_accounting(tmp_path / "out", [r[1] for r in rows], bad)
    check_no_patient_leak(got)
    by_image = {r[1]: r for r in rows}
    for split, c in got.values():
        for image_id, data in zip(c.image_ids, c.images):
            lesion, _, dx = by_image[image_id][:3]
            assert c.case_id == lesion == c.patient_id
            assert HAM_CLASSES[c.label_class] == dx
            assert data == files[image_id]                  # JPEG passed through unchanged
    # all surviving images of a lesion are in its one case, in source order
    expect = {}
    for r in rows:
        if r[1] not in bad:
            expect.setdefault(r[0], []).append(r[1])
    assert {cid: c.image_ids for cid, (_, c) in got.items()} == expect
    assert info["source"]["sha256"] == hashlib.sha256(
        (tmp_path / "ham" / "HAM10000_metadata.csv").read_bytes()).hexdigest()
    for key in ("schema_version", "task", "class_names", "splits", "source", "split_seed",
                "split_fractions", "label_fractions", "skipped"):
        assert key in info
    on_disk = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert on_disk["splits"] == info["splits"]
    for split, s in on_disk["splits"].items():
        assert s["shards"] == [os.path.basename(p) for p in
                               records.list_shards(str(tmp_path / "out"), split)] if s["cases"] \
            else s["shards"] == []
        hist = Counter(len(c.images) for sp, c in got.values() if sp == split)
        assert s["images_per_case"] == {str(k): v for k, v in sorted(hist.items())}
        labels = Counter(HAM_CLASSES[c.label_class] for sp, c in got.values() if sp == split)
        assert s["label_counts"] == {k: labels.get(k, 0) for k in HAM_CLASSES}


def test_isic2019_onehot_lesion_groups_and_bad_label(tmp_path):
    root = tmp_path / "isic19"
    gt, meta, files = [], [], {}
    for i in range(20):
        image = f"ISIC_{i:07d}"
        files[image] = write_image(root / "ISIC_2019_Training_Input" / f"{image}.jpg", i)
        k = (i // 2) % 8                 # a lesion's two images share the label; no UNK
        gt.append([image] + ["1.0" if j == k else "0.0" for j in range(9)])
        lesion = f"BCN_{i // 2:010d}" if i < 12 else ""   # pairs share a lesion; rest empty
        meta.append([image, "55.0", "anterior torso", lesion, "female"])
    gt[15] = [gt[15][0]] + ["1.0", "1.0"] + ["0.0"] * 7          # not one-hot
    write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ["image"] + ISIC19, gt)
    write_csv(root / "ISIC_2019_Training_Metadata.csv",
              ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"], meta)
    info = run("isic2019", root, tmp_path / "out")
    assert info["class_names"] == ISIC19
    got = check_accounting(tmp_path / "out", [r[0] for r in gt], {gt[15][0]: "bad label"})
    check_no_patient_leak(got)
    lesion_of = {m[0]: m[3] or m[0] for m in meta}
    label_of = {r[0]: ISIC19[[v for v in r[1:]].index("1.0")] for r in gt}
    for _, c in got.values():
        for image_id, data in zip(c.image_ids, c.images):
            assert c.case_id == lesion_of[image_id]
            assert ISIC19[c.label_class] == label_of[image_id]
            assert data == files[image_id]
    assert sorted(len(c.images) for _, c in got.values()) == [1] * 7 + [2] * 6


def test_isic2020_patient_cases_dicom_and_mixed_labels(tmp_path):
    root = tmp_path / "isic20"
    rows = []
    plan = {"IP_0000001": [0, 0, 0], "IP_0000002": [0, 1, 0], "IP_0000003": [1],
            "IP_0000004": [0, 0], "IP_0000005": [0]}
    n = 0
    for patient, targets in plan.items():
        for t in targets:
            name = f"ISIC_{n:07d}"
            if n == 4:                                  # only the DICOM exists for this one
                write_dicom(root / "train" / f"{name}.dcm", n)
            else:
                write_image(root / "jpeg" / "train" / f"{name}.jpg", n)
                if n == 5:                              # both exist: the JPEG is preferred
                    write_dicom(root / "train" / f"{name}.dcm", n)
            rows.append([name, patient, "male", "45.0", "torso",
                         "melanoma" if t else "nevus", "malignant" if t else "benign", str(t)])
            n += 1
    write_csv(root / "train.csv", ["image_name", "patient_id", "sex", "age_approx",
                                   "anatom_site_general_challenge", "diagnosis",
                                   "benign_malignant", "target"], rows)
    info = run("isic2020", root, tmp_path / "out")
    assert info["class_names"] == ["benign", "malignant"]
    got = check_accounting(tmp_path / "out", [r[0] for r in rows], {})
    check_no_patient_leak(got)
    row = {r[0]: r for r in rows}
    for cid, (_, c) in got.items():
        for image_id in c.image_ids:
            assert c.patient_id == row[image_id][1]
            assert c.label_class == int(row[image_id][7])
    # one case per patient; the patient with both labels gets one case per label
    assert sorted(got) == ["IP_0000001", "IP_0000002:benign", "IP_0000002:malignant",
                           "IP_0000003", "IP_0000004", "IP_0000005"]
    assert got["IP_0000002:benign"][1].image_ids == ["ISIC_0000003", "ISIC_0000005"]
    dcm_case = got["IP_0000002:malignant"][1]
    assert dcm_case.image_ids == ["ISIC_0000004"]
    img = Image.open(io.BytesIO(dcm_case.images[0]))
    assert img.format == "PNG" and img.size == (32, 32) and img.mode == "L"
    jpg = got["IP_0000002:benign"][1].images[1]
    assert jpg == (root / "jpeg" / "train" / "ISIC_0000005.jpg").read_bytes()


def make_chexpert(root):
    """CheXpert-v1.0-small/{train,valid}.csv + train/patientN/studyM/viewK_{frontal,lateral}.jpg"""
    rng = np.random.default_rng(5)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT_CLASSES
    out = {"train": [], "valid": []}
    n = 0
    studies = [("train", 1, 1, 2), ("train", 1, 2, 1), ("train", 2, 1, 2), ("train", 3, 1, 1),
               ("train", 4, 1, 2), ("train", 5, 1, 1), ("train", 6, 1, 2), ("train", 7, 1, 1),
               ("valid", 64541, 1, 2), ("valid", 64542, 1, 1)]
    for split, pat, study, views in studies:
        if split == "train":
            labels = [["1.0", "0.0", "-1.0", ""][v] for v in rng.integers(0, 4, 14)]
            labels[2], labels[3] = "-1.0", ""                      # surely one of each
        else:
            labels = [["1.0", "0.0"][v] for v in rng.integers(0, 2, 14)]
        for v in range(views):
            kind = "frontal" if v == 0 else "lateral"
            rel = f"CheXpert-v1.0-small/{split}/patient{pat:05d}/study{study}/view{v + 1}_{kind}.jpg"
            write_image(root / rel, n, mode="L")
            out[split].append([rel, "Female", "68", kind.capitalize(),
                               "AP" if kind == "frontal" else ""] + labels)
            n += 1
    base = root / "CheXpert-v1.0-small"
    write_csv(base / "train.csv", header, out["train"])
    write_csv(base / "valid.csv", header, out["valid"])
    return base, out


def test_chexpert_studies_views_uncertain_and_valid_split(tmp_path):
    base, rows = make_chexpert(tmp_path)
    info = run("chexpert", base, tmp_path / "out",
               split_fractions={"train": 0.6, "validation": 0.2, "test": 0.2})
    assert info["task"] == "multilabel" and info["class_names"] == CHEXPERT_CLASSES
    all_rows = rows["train"] + rows["valid"]
    got = check_accounting(tmp_path / "out", [r[0] for r in all_rows], {})
    check_no_patient_leak(got)
    by_path = {r[0]: r for r in all_rows}
    for cid, (split, c) in got.items():
        parts = c.image_ids[0].split("/")
        assert cid == f"{parts[2]}/{parts[3]}" and c.patient_id == parts[2]
        assert c.label_class == -1
        assert (split == "valid") == (parts[1] == "valid")
        assert c.views == [by_path[i][3].lower() for i in c.image_ids]
        for i in c.image_ids:
            want = [math.nan if v == "" else float(v) for v in by_path[i][5:]]
            assert len(c.label_multi) == 14
            for a, b in zip(c.label_multi, want):
                assert (math.isnan(a) and math.isnan(b)) or a == b
    # frontal + lateral of one study share a case
    two = got["patient00001/study1"][1]
    assert two.views == ["frontal", "lateral"] and len(two.images) == 2
    assert any(v == -1.0 for _, c in got.values() for v in c.label_multi)
    assert any(math.isnan(v) for _, c in got.values() for v in c.label_multi)
    assert info["splits"]["valid"]["cases"] == 2 and info["splits"]["valid"]["images"] == 3
    lc = info["splits"]["valid"]["label_counts"]["Cardiomegaly"]
    assert sum(lc.values()) == 2


def test_csv_multiclass_with_split_column_png_dicom_and_views(tmp_path):
    root = tmp_path / "export"
    rows = []
    for i in range(16):
        patient = f"PT{i // 4}"
        case = f"{patient}-visit{(i // 2) % 2}"
        if i == 3:
            rel = f"dicom/img{i}.dcm"
            write_dicom(root / rel, i, photometric="MONOCHROME1")
        elif i % 3 == 0:
            rel = f"png/img{i}.png"
            write_image(root / rel, i, fmt="PNG")
        else:
            rel = f"jpg/img{i}.jpg"
            write_image(root / rel, i)
        split = "test" if patient == "PT3" else ""
        label = ["benign", "malignant", "unknown"][(i // 2) % 3]
        rows.append([rel, case, patient, "dermoscopic" if i % 2 else "clinical", split, label])
    rows.append(["jpg/missing.jpg", "PT9-visit0", "PT9", "", "", "benign"])
    manifest = root / "manifest.csv"
    write_csv(manifest, ["image", "case_id", "patient_id", "view", "split", "label"], rows)
    info = run("csv", manifest, tmp_path / "out",
               format_options=FormatOptions(class_names=["benign", "malignant", "unknown"]))
    assert info["class_names"] == ["benign", "malignant", "unknown"]
    got = check_accounting(tmp_path / "out", [r[0] for r in rows],
                           {"jpg/missing.jpg": "missing"})
    check_no_patient_leak(got)
    by_path = {r[0]: r for r in rows}
    for cid, (split, c) in got.items():
        for i, data in zip(c.image_ids, c.images):
            r = by_path[i]
            assert (cid, c.patient_id) == (r[1], r[2])
            assert info["class_names"][c.label_class] == r[5]
            assert Image.open(io.BytesIO(data)).format in ("JPEG", "PNG")
            if r[0].endswith((".jpg", ".png")):
                assert data == (root / r[0]).read_bytes()
        assert c.views == [by_path[i][3] for i in c.image_ids]
        if c.patient_id == "PT3":
            assert split == "test"                    # source split kept
    assert len(got["PT0-visit1"][1].images) == 2


def test_csv_multilabel_columns_and_unlabeled(tmp_path):
    root = tmp_path / "ml"
    rows = []
    vals = ["1", "0", "-1", ""]
    for i in range(10):
        write_image(root / f"{i}.jpg", i)
        labs = [vals[(i + k) % 4] for k in range(3)] if i < 8 else ["", "", ""]
        rows.append([f"{i}.jpg", f"s{i}", f"p{i}"] + labs)
    write_csv(root / "m.csv", ["file", "study", "pid", "effusion", "edema", "mass"], rows)
    from data_prep.manifest import CsvColumns
    cols = CsvColumns(image="file", case="study", patient="pid",
                      labels=["effusion", "edema", "mass"])
    info = run("csv", root / "m.csv", tmp_path / "out",
               format_options=FormatOptions(columns=cols))
    assert info["task"] == "multilabel" and info["class_names"] == ["effusion", "edema", "mass"]
    got = check_accounting(tmp_path / "out", [r[0] for r in rows], {})
    for cid, (split, c) in got.items():
        r = next(r for r in rows if r[1] == cid)
        want = [math.nan if v == "" else float(v) for v in r[3:]]
        assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(c.label_multi, want))
        assert (split == "unlabeled") == all(v == "" for v in r[3:])


def test_folders_classes_unlabeled_and_case_regex(tmp_path):
    root = tmp_path / "folders"
    expect = {}
    n = 0
    for cls in ("benign", "malignant"):
        for patient in range(3):
            for visit in range(2):
                for k in range(1 + visit):
                    rel = f"{cls}/P{cls[0]}{patient}_visit{visit}_img{k}.jpg"
                    write_image(root / rel, n)
                    expect[rel] = (f"P{cls[0]}{patient}_visit{visit}", f"P{cls[0]}{patient}", cls)
                    n += 1
    write_image(root / "unlabeled" / "Pu0_visit0_img0.jpg", 100)
    write_image(root / "stray.png", 101, fmt="PNG")
    expect["unlabeled/Pu0_visit0_img0.jpg"] = ("Pu0_visit0", "Pu0", None)
    expect["stray.png"] = ("stray.png", "stray.png", None)
    (root / "benign" / "notes.txt").write_text("not an image")
    info = run("folders", root, tmp_path / "out", format_options=FormatOptions(
        case_regex=r"^(?P<case>(?P<patient>P\w\d)_visit\d)_"))
    assert info["class_names"] == ["benign", "malignant"]
    # every file under the input is a record or a skipped row: the text file is listed
    got = check_accounting(tmp_path / "out", list(expect) + ["benign/notes.txt"],
                           {"benign/notes.txt": "unsupported: file type .txt"})
    check_no_patient_leak(got)
    for cid, (split, c) in got.items():
        for i in c.image_ids:
            case, patient, cls = expect[i]
            assert (cid, c.patient_id) == (case, patient)
            if cls is None:
                assert c.label_class == -1 and split == "unlabeled"
            else:
                assert info["class_names"][c.label_class] == cls
    assert len(got["Pb1_visit1"][1].images) == 2


@pytest.mark.subprocess
def test_parallel_workers_write_the_same_shards_as_one_process(tmp_path):
    rows, _, _ = make_ham10000(tmp_path / "ham", broken=False)
    run("ham10000", tmp_path / "ham", tmp_path / "o1", workers=1, shard_mb=0.004)
    run("ham10000", tmp_path / "ham", tmp_path / "o2", workers=2, shard_mb=0.004)
    s1 = sorted(f for f in os.listdir(tmp_path / "o1") if f.endswith(".tfrecord"))
    s2 = sorted(f for f in os.listdir(tmp_path / "o2") if f.endswith(".tfrecord"))
    assert s1 == s2 and len(s1) > 3                   # several shards per split
    for f in s1:
        assert (tmp_path / "o1" / f).read_bytes() == (tmp_path / "o2" / f).read_bytes()
    assert sum(len(c.images) for _, c in read_back(tmp_path / "o2").values()) == len(rows)


def test_label_fraction_subset_files(tmp_path):
    rows, _, _ = make_ham10000(tmp_path / "ham", broken=False)
    info = run("ham10000", tmp_path / "ham", tmp_path / "out", label_fractions=[0.1, 0.5, 1.0],
               split_fractions={"train": 1.0})
    out = str(tmp_path / "out")
    assert info["label_fractions"] == [0.1, 0.5, 1.0]
    train = {c.case_id: c for c in records.iter_cases(out, "train")}
    subs = {f: records.read_subset(out, "train", f) for f in (0.1, 0.5, 1.0)}
    assert set(subs[0.1]) <= set(subs[0.5]) <= set(subs[1.0]) == set(train)
    per_class = Counter(c.label_class for c in train.values())      # 2 lesions per class
    small = Counter(train[i].label_class for i in subs[0.1])
    assert small == {k: 1 for k in per_class}                       # >= 1 of every class


def test_strict_fails_and_keeps_the_previous_dataset(tmp_path, capsys):
    make_ham10000(tmp_path / "ham")
    args = ["--format", "ham10000", "--input", str(tmp_path / "ham"), "--no-progress",
            "--workers", "1", "--log-level", "ERROR"]
    assert main(args + ["--out", str(tmp_path / "fresh"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strict" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "fresh").exists()
    assert main(args + ["--out", str(tmp_path / "out")]) == 0
    before = {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")
              if os.path.isfile(tmp_path / "out" / f)}
    assert main(args + ["--out", str(tmp_path / "out"), "--overwrite", "--strict"]) == 2
    after = {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")
             if os.path.isfile(tmp_path / "out" / f)}
    assert after == before
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".")]


def test_overwrite_replaces_stale_shards(tmp_path, capsys):
    make_ham10000(tmp_path / "ham", broken=False)
    base = ["--format", "ham10000", "--input", str(tmp_path / "ham"), "--out",
            str(tmp_path / "out"), "--no-progress", "--workers", "1", "--log-level", "ERROR"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.txt").write_text("mine")
    assert main(base) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(base + ["--overwrite", "--shard-mb", "0.004"]) == 0
    many = {f for f in os.listdir(tmp_path / "out") if f.endswith(".tfrecord")}
    assert main(base + ["--overwrite", "--split-fractions", "train=1"]) == 0
    now = {f for f in os.listdir(tmp_path / "out") if f.endswith(".tfrecord")}
    assert now == {"train-00000-of-00001.tfrecord"} and len(many) > 1
    assert (tmp_path / "out" / "README.txt").read_text() == "mine"
    assert len(read_back(tmp_path / "out")) == 14


def test_inspect_reports_and_detects_a_damaged_shard(tmp_path, capsys):
    rows, _, bad = make_ham10000(tmp_path / "ham")
    run("ham10000", tmp_path / "ham", tmp_path / "out", split_fractions={"train": 1.0})
    assert main(["inspect", str(tmp_path / "out"), "--decode-images"]) == 0
    text = capsys.readouterr().out
    lesions = {r[0] for r in rows if r[1] not in bad}
    assert f"train: {len(lesions)} cases, {len(rows) - len(bad)} images" in text
    assert "images per case" in text
    assert "OK: every shard parses" in text
    shard = tmp_path / "out" / "train-00000-of-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-40])
    assert main(["inspect", str(tmp_path / "out")]) == 1
    assert "PROBLEM" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothing")]) == 2


def test_folders_walk_survives_a_symlink_loop(tmp_path):
    write_image(tmp_path / "src" / "a" / "x.jpg", 1)
    os.symlink(tmp_path / "src", tmp_path / "src" / "a" / "loop")
    run("folders", tmp_path / "src", tmp_path / "out", split_fractions={"train": 1.0})
    assert [c.image_ids for _, c in read_back(tmp_path / "out").values()] == [["a/x.jpg"]]


def test_beam_runner_without_apache_beam_is_a_clear_error(tmp_path, capsys):
    try:
        import apache_beam  # noqa: F401
        pytest.skip("apache_beam is installed here")
    except ImportError:
        pass
    write_image(tmp_path / "src" / "a" / "x.jpg", 1)
    assert main(["--format", "folders", "--input", str(tmp_path / "src"), "--out",
                 str(tmp_path / "out"), "--runner", "beam", "--no-progress",
                 "--log-level", "ERROR"]) == 2
    assert "pip install 'tfmicle[beam]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--format", "nope", "--input", "x", "--out", "y"], "invalid choice"),
    (["--format", "csv", "--input", "/no/such/file.csv", "--out", "OUT"], "not found"),
    (["--format", "ham10000", "--input", "HAM", "--out", "OUT"], "HAM10000_metadata.csv"),
    (["--format", "folders", "--input", "HAM", "--out", "OUT", "--split-fractions",
      "train=0.5,test=0.2"], "add up to"),
    (["--format", "folders", "--input", "HAM", "--out", "OUT", "--max-side", "-1"], "max-side"),
    (["--input", "x"], "required"),
])
def test_cli_user_mistakes_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "ham").mkdir()
    argv = [a.replace("HAM", str(tmp_path / "ham")).replace("OUT", str(tmp_path / "o"))
            for a in argv]
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]


@pytest.mark.subprocess
def test_python_m_help_and_error_in_a_subprocess(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] + sys.path))
    r = subprocess.run([sys.executable, "-m", "data_prep", "--help"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and "--format" in r.stdout and "inspect" in r.stdout
    r = subprocess.run([sys.executable, "-m", "data_prep", "--format", "nope", "--input", "x",
                        "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "invalid choice" in r.stderr
