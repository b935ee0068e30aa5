"""data_prep against a careless data engineer: duplicate images across
patients, files the folders format used to drop silently, images that Pillow reads but
TensorFlow does not, EXIF rotation, byte-identical output across processes, mistakes
that used to exit 0, and the smaller items (numeric class order, orphaned workers, the
real size of small label subsets, --strict naming the file)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep.__main__ import main
from data_prep.formats import FormatOptions
from tfmicle.data import records
from tests.test_data_prep import (make_ham10000, read_back, run, skipped_rows, write_csv,
                                  write_image)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + sys.path), **extra)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "data_prep", *args, "--no-progress", "--log-level", "ERROR"]


def jpeg(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", **kw)
    return buf.getvalue()


def no_eoi(seed: int) -> bytes:
    """A JPEG whose end-of-image marker is replaced by zero padding: Pillow decodes it,
    TensorFlow's decoder (the one training uses) rejects it."""
    y, x = np.mgrid[0:24, 0:32]
    smooth = np.stack([x * 8, y * 10, (x + y + 7 * seed) * 4], axis=-1) % 256
    data = jpeg(smooth.astype(np.uint8), quality=95)
    assert data[-2:] == b"\xff\xd9"
    return data[:-2] + b"\0" * 64


# ----------------------------------------------------------------------- 1. duplicates

def _duplicate_manifest(tmp_path, pairs: int = 12):
    """A csv manifest: patient A<i> and patient B<i> each have one image of their own,
    and B<i> also has a copy of A<i>'s image under another name (ISIC-style)."""
    img = tmp_path / "img"
    rows, copy_of = [], {}
    for i in range(pairs):
        a = write_image(img / f"a{i}.jpg", 1000 + i)
        write_image(img / f"b{i}.jpg", 2000 + i)
        (img / f"copy_b{i}.jpg").write_bytes(a)
        rows += [[f"a{i}.jpg", f"A{i}", "x"], [f"b{i}.jpg", f"B{i}", "y"],
                 [f"copy_b{i}.jpg", f"B{i}", "y"]]
        copy_of[f"copy_b{i}.jpg"] = f"a{i}.jpg"
    write_csv(img / "m.csv", ["image", "patient_id", "label"], rows)
    return copy_of


def test_identical_bytes_under_two_patients_are_written_once_and_patients_merged(tmp_path):
    copy_of = _duplicate_manifest(tmp_path)
    info = run("csv", tmp_path / "img" / "m.csv", tmp_path / "out",
               split_fractions={"train": 0.5, "test": 0.5}, split_seed=3)
    got = read_back(tmp_path / "out")
    written = [i for _, c in got.values() for i in c.image_ids]
    assert sorted(written) == sorted(f"{k}{i}.jpg" for k in "ab" for i in range(12))
    skipped = {r["image_id"]: r["reason"] for r in skipped_rows(tmp_path / "out")}
    assert set(skipped) == set(copy_of)
    for copy, orig in copy_of.items():
        assert skipped[copy].startswith("duplicate: same content as") and orig in skipped[copy]
    # A<i> and B<i> share an image: they must land in one split, for every i
    split_of = {c.patient_id: split for split, c in got.values()}
    assert {split_of[f"A{i}"] == split_of[f"B{i}"] for i in range(12)} == {True}
    assert len(set(split_of.values())) == 2               # the groups still spread
    assert info["duplicates"]["same_content"] == 12
    assert info["duplicates"]["cross_patient"] == 12
    assert info["duplicates"]["merged_patients"] == 24


def test_duplicates_across_patients_are_refused_under_strict(tmp_path, capsys):
    _duplicate_manifest(tmp_path, pairs=2)
    rc = main(["--format", "csv", "--input", str(tmp_path / "img" / "m.csv"), "--out",
               str(tmp_path / "out"), "--strict", "--no-progress", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "copy_b0.jpg" in err[0] and "a0.jpg" in err[0] and "patient 'A0'" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_copy_within_one_patient_is_dropped_and_passes_strict(tmp_path):
    img = tmp_path / "img"
    a = write_image(img / "a.jpg", 1)
    (img / "a_again.jpg").write_bytes(a)
    write_image(img / "b.jpg", 2)
    write_csv(img / "m.csv", ["image", "case_id", "patient_id", "label"],
              [["a.jpg", "L1", "P1", "x"], ["a_again.jpg", "L1", "P1", "x"],
               ["b.jpg", "L2", "P1", "x"]])
    info = run("csv", img / "m.csv", tmp_path / "out", split_fractions={"train": 1.0},
               strict=True)
    written = sorted(i for _, c in read_back(tmp_path / "out").values() for i in c.image_ids)
    assert written == ["a.jpg", "b.jpg"]
    (row,) = skipped_rows(tmp_path / "out")
    assert row["image_id"] == "a_again.jpg" and row["reason"].startswith("duplicate")
    assert info["duplicates"]["same_content"] == 1 and info["duplicates"]["cross_patient"] == 0


def test_one_file_through_a_symlinked_folder_and_its_real_path_is_written_once(tmp_path):
    write_image(tmp_path / "real" / "x.jpg", 1)
    os.symlink(tmp_path / "real", tmp_path / "alias")
    write_csv(tmp_path / "m.csv", ["image", "patient_id", "label"],
              [["real/x.jpg", "P1", "a"], ["alias/x.jpg", "P2", "a"]])
    info = run("csv", tmp_path / "m.csv", tmp_path / "out", split_fractions={"train": 1.0})
    assert [c.image_ids for _, c in read_back(tmp_path / "out").values()] == [["real/x.jpg"]]
    (row,) = skipped_rows(tmp_path / "out")
    assert row["image_id"] == "alias/x.jpg" and row["reason"].startswith("duplicate: same file")
    assert info["duplicates"]["same_file"] == 1


# ------------------------------------------------------ 2. nothing lost in the folders format

def test_every_file_under_a_folders_input_is_converted_or_listed(tmp_path):
    src = tmp_path / "src"
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    Image.fromarray(arr).save(src / "a" / "x.webp")
    Image.fromarray(arr[::-1]).save(src / "b" / "y.gif")
    (src / "b" / "z.jfif").write_bytes(jpeg(arr[:, ::-1]))
    write_image(src / "a" / "ok.jpg", 5)
    (src / "a" / "notes.txt").write_text("hi")
    (src / "a" / ".DS_Store").write_bytes(b"\0")
    os.symlink(tmp_path / "nowhere.jpg", src / "b" / "dangling.jpg")
    run("folders", src, tmp_path / "out", split_fractions={"train": 1.0})
    written = {i for _, c in read_back(tmp_path / "out").values() for i in c.image_ids}
    assert written == {"a/x.webp", "b/y.gif", "b/z.jfif", "a/ok.jpg"}
    skipped = {r["image_id"]: r["reason"] for r in skipped_rows(tmp_path / "out")}
    assert skipped.keys() == {"a/notes.txt", "a/.DS_Store", "b/dangling.jpg"}
    assert skipped["b/dangling.jpg"].startswith("missing: dangling symlink")
    assert skipped["a/notes.txt"].startswith("unsupported")


# ------------------------------------------------- 3. validated with TensorFlow's decoder

def test_a_jpeg_pillow_reads_but_tensorflow_rejects_is_reencoded(tmp_path):
    bad = no_eoi(3)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(bad)                             # what training would hit
    Image.open(io.BytesIO(bad)).load()                      # Pillow alone accepts it
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "bad.jpg").write_bytes(bad)
    run("folders", tmp_path / "src", tmp_path / "out", split_fractions={"train": 1.0})
    ((_, case),) = read_back(tmp_path / "out").values()
    decoded = tf.io.decode_image(case.images[0]).numpy()    # the training decoder reads it
    assert decoded.shape == (24, 32, 3)
    pil = np.asarray(Image.open(io.BytesIO(bad)).convert("RGB"), np.float32)
    assert np.abs(decoded.astype(np.float32) - pil).mean() < 4.0   # same picture


def test_inspect_decode_images_uses_the_training_decoder(tmp_path, capsys):
    make_ham10000(tmp_path / "ham", broken=False)
    run("ham10000", tmp_path / "ham", tmp_path / "out", split_fractions={"train": 1.0})
    out = tmp_path / "out"
    shard = out / "train-00000-of-00001.tfrecord"
    cases = [records.decode_case(r.numpy()) for r in tf.data.TFRecordDataset(str(shard))]
    with tf.io.TFRecordWriter(str(shard)) as w:
        for k, c in enumerate(cases):
            images = [no_eoi(9)] + c.images[1:] if k == 0 else c.images
            w.write(records.encode_case(c.case_id, images, c.image_ids, c.patient_id,
                                        None, c.label_class).SerializeToString())
    assert main(["inspect", str(out), "--decode-images"]) == 1
    err = capsys.readouterr().err
    assert "does not decode" in err and cases[0].case_id in err


# ------------------------------------------------------------------- 4. EXIF orientation

def test_exif_orientation_is_applied_and_dropped(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255                     # a white band on the stored image's left
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6                         # display: rotate 90 degrees clockwise
    (tmp_path / "src" / "a").mkdir(parents=True)
    img.save(tmp_path / "src" / "a" / "phone.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    run("folders", tmp_path / "src", tmp_path / "out", split_fractions={"train": 1.0})
    ((_, case),) = read_back(tmp_path / "out").values()
    up = tf.io.decode_image(case.images[0]).numpy().mean(axis=2)
    assert up.shape == (40, 20)              # upright: 20 wide, 40 high
    assert up[:8].mean() > 200 and up[12:].mean() < 40    # the band is now on top
    assert 0x0112 not in Image.open(io.BytesIO(case.images[0])).getexif()


# ------------------------------------------------------------ 5. deterministic output

@pytest.mark.subprocess
def test_two_processes_write_byte_identical_shards(tmp_path):
    make_ham10000(tmp_path / "ham", broken=False)
    outs = []
    for k, seed in enumerate(("1", "2")):
        out = tmp_path / f"o{k}"
        r = subprocess.run(_cli("--format", "ham10000", "--input", str(tmp_path / "ham"),
                                "--out", str(out), "--workers", "1"),
                           env=_env(PYTHONHASHSEED=seed), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(out)
    shards = sorted(f for f in os.listdir(outs[0]) if f.endswith(".tfrecord"))
    assert shards == sorted(f for f in os.listdir(outs[1]) if f.endswith(".tfrecord"))
    for f in shards:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


# ----------------------------------------------------------- 6. mistakes that exit 2

@pytest.mark.parametrize("layout, marker", [
    ("ham10000", "HAM10000_metadata.csv"),
    ("isic2019", "ISIC_2019_Training_GroundTruth.csv"),
    ("isic2020", "train.csv"),
    ("chexpert", "train.csv"),
])
def test_folders_format_on_a_known_layout_is_refused_with_a_hint(tmp_path, capsys, layout,
                                                                 marker):
    root = tmp_path / "in"
    write_image(root / "images_part_1" / "ISIC_1.jpg", 1)
    header = {"isic2020": ["image_name", "patient_id", "target"],
              "chexpert": ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]}.get(
        layout, ["image"])
    write_csv(root / marker, header, [])
    assert main(["--format", "folders", "--input", str(root), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--format {layout}" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_manifest_whose_files_are_all_missing_exits_2(tmp_path, capsys):
    write_csv(tmp_path / "m.csv", ["image", "label"], [["nope1.jpg", "a"], ["nope2.jpg", "b"]])
    assert main(["--format", "csv", "--input", str(tmp_path / "m.csv"), "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the 2 listed images" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_manifest_whose_files_are_all_unreadable_exits_2(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg at all")
    write_csv(tmp_path / "m.csv", ["image", "label"], [["a.jpg", "a"]])
    assert main(["--format", "csv", "--input", str(tmp_path / "m.csv"), "--out",
                 str(tmp_path / "o"), "--no-progress", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image could be used" in err[0] and "a.jpg" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_out_equal_to_or_inside_input_exits_2(tmp_path, capsys, where):
    write_image(tmp_path / "src" / "a" / "x.jpg", 1)
    out = tmp_path / "src" if where == "same" else tmp_path / "src" / "records"
    assert main(["--format", "folders", "--input", str(tmp_path / "src"), "--out", str(out),
                 "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside --input" in err[0]
    assert sorted(os.listdir(tmp_path / "src")) == ["a"]


@pytest.mark.parametrize("damage", ["json", "not_dict", "bad_field", "shard_dir", "not_case",
                                    "subset"])
def test_inspect_reports_damage_as_problems_without_a_traceback(tmp_path, capsys, damage):
    make_ham10000(tmp_path / "ham", broken=False)
    run("ham10000", tmp_path / "ham", tmp_path / "out", split_fractions={"train": 1.0})
    out = tmp_path / "out"
    shard = out / "train-00000-of-00001.tfrecord"
    info = json.loads((out / "dataset.json").read_text())
    if damage == "json":
        (out / "dataset.json").write_text('{"splits": {"train": ')
    elif damage == "not_dict":
        (out / "dataset.json").write_text("[1, 2]")
    elif damage == "bad_field":
        info["splits"]["train"]["shards"] = 7
        (out / "dataset.json").write_text(json.dumps(info))
    elif damage == "shard_dir":
        shard.unlink()
        shard.mkdir()
    elif damage == "not_case":
        with tf.io.TFRecordWriter(str(shard)) as w:
            w.write(b"certainly not a tf.train.Example")
    else:
        for f in (out / "subsets").iterdir():
            f.write_bytes(b"\xff\xfe\x00bad")
    assert main(["inspect", str(out)]) == 1
    err = capsys.readouterr().err
    assert "PROBLEM" in err and "Traceback" not in err


# ------------------------------------------------------------------- 7. smaller items

def test_numeric_class_names_sort_by_value(tmp_path):
    for k, cls in enumerate(("10", "2", "1")):
        write_image(tmp_path / "src" / cls / "x.jpg", k)
    info = run("folders", tmp_path / "src", tmp_path / "out", split_fractions={"train": 1.0})
    assert info["class_names"] == ["1", "2", "10"]
    write_csv(tmp_path / "m.csv", ["image", "label"],
              [[f"src/{c}/x.jpg", c] for c in ("10", "2", "1")])
    info = run("csv", tmp_path / "m.csv", tmp_path / "out2", split_fractions={"train": 1.0})
    assert info["class_names"] == ["1", "2", "10"]


def test_small_subsets_report_their_real_fraction(tmp_path):
    make_ham10000(tmp_path / "ham", broken=False)             # 14 lesions, 2 per class
    info = run("ham10000", tmp_path / "ham", tmp_path / "out", split_fractions={"train": 1.0},
               label_fractions=[0.01, 1.0])
    sub = info["subsets"]["train"]
    assert sub["0.01"]["cases"] == 7                          # the floor: 1 of each class
    assert sub["0.01"]["fraction"] == pytest.approx(7 / 14, abs=1e-6)
    assert sub["1"]["fraction"] == 1.0


def test_strict_names_the_file(tmp_path, capsys):
    _, _, bad = make_ham10000(tmp_path / "ham")
    trunc = next(k for k, v in bad.items() if v == "corrupt")
    found = [os.path.join("ham", p, f) for p in ("HAM10000_images_part_1",
                                                "HAM10000_images_part_2")
             for f in os.listdir(tmp_path / "ham" / p) if f.startswith(trunc)]
    write_csv(tmp_path / "m.csv", ["image", "label"], [[found[0], "a"]])
    assert main(["--format", "csv", "--input", str(tmp_path / "m.csv"), "--out",
                 str(tmp_path / "o"), "--strict", "--no-progress", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(tmp_path / "ham") in err and f"{trunc}.jpg" in err and "corrupt" in err


@pytest.mark.slow
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for c in ("c0", "c1"):
        (src / c).mkdir(parents=True)
    for i in range(600):                     # enough that the run is still going
        arr = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(arr).save(src / f"c{i % 2}" / f"{i}.png")
    p = subprocess.Popen(_cli("--format", "folders", "--input", str(src), "--out",
                              str(tmp_path / "out"), "--workers", "2", "--max-side", "64"),
                         env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = _wait_for_workers(p.pid, 2, timeout=120)
        assert p.poll() is None, "the run ended before the test could kill it"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "workers outlived their parent"
    finally:
        if p.poll() is None:
            p.kill()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_workers(pid: int, n: int, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = [k for k in _children(pid) if "spawn_main" in _cmdline(k)]
        if len(kids) >= n:
            time.sleep(1.0)                  # let them start working
            return kids
        time.sleep(0.1)
    raise AssertionError("the worker processes did not start")
