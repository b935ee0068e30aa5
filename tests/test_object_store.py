"""Object-store paths: every path a user gives may be a URL of TensorFlow's
filesystems. Tested on ``ram://``, TensorFlow's in-memory filesystem of this process:
it has the object-store properties that matter (no shared view with other processes,
paths with a scheme that os and pathlib mangle, a zero mtime) without a network.

End to end: data_prep (folders format, ram:// in, ram:// out) -> records read back ->
export of a tiny fine-tuned run to ram:// -> score from ram:// to ram:// -> a server
whose model repository is on ram://, picking up a version copied in file by file only
once its publish marker lands.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf

import _finetune_runs as runs
from conftest import png_bytes
from tfmicle import fileio
from tfmicle import model_format as mf
from tfmicle.data import records


@pytest.fixture
def ram():
    """A fresh ram:// prefix (the filesystem is one per process, shared by all tests)."""
    base = f"ram://t{uuid.uuid4().hex[:10]}"
    yield base
    if tf.io.gfile.exists(base):
        tf.io.gfile.rmtree(base)


def class_images(n_per_class: int, classes=runs.CLASSES, size: int = 40, seed: int = 0
                 ) -> dict[str, bytes]:
    """{"<class>/img<i>.png": PNG} of coloured noise tinted by class (as conftest's
    synthetic_cases), so the tiny model's predictions are not all alike."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, c in enumerate(classes):
        for i in range(n_per_class):
            a = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
            a[..., k] = 0.5 * a[..., k] + 127
            out[f"{c}/img{i}.png"] = png_bytes(a.astype(np.uint8))
    return out


def write_tree(base: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        fileio.makedirs(fileio.dirname(fileio.join(base, rel)))
        fileio.write_bytes(fileio.join(base, rel), data)


def read_csv_url(path: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(fileio.read_text(path), newline="")))


def records_of(data_dir: str, split: str) -> list[str]:
    try:
        return records.list_shards(data_dir, split)
    except FileNotFoundError:
        return []


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- fileio

@pytest.mark.parametrize("path,norm,parent,base", [
    ("gs://bucket/a/b/", "gs://bucket/a/b", "gs://bucket/a", "b"),
    ("ram://x//y/./z", "ram://x/y/z", "ram://x/y", "z"),
    ("gs://bucket", "gs://bucket", "gs://bucket", "bucket"),
    ("file:///tmp/a", "file:///tmp/a", "file:///tmp", "a"),
])
def test_url_names_keep_their_scheme(path, norm, parent, base):
    """os.path.normpath("gs://b/a") gives "gs:/b/a" and pathlib does the same: the
    helpers must not."""
    if fileio.is_url(path):
        assert fileio.normpath(path) == norm
        assert fileio.dirname(path) == parent
        assert fileio.basename(path) == base
        assert fileio.join(norm, "c", "d.txt") == norm + "/c/d.txt"
        assert fileio.relpath(norm + "/c/d.txt", path) == "c/d.txt"
        assert not fileio.has_atomic_rename(path)
    else:  # file:// is a local path: os semantics, atomic rename
        assert fileio.scheme(path) == "" and fileio.has_atomic_rename(path)
    assert fileio.is_process_local(path) == path.startswith("ram://")


def test_ram_and_local_trees_read_back_alike(ram, tmp_path):
    """The same files written to a local folder and to ram:// give the same walk,
    listing, sizes, glob and bytes (os is the reference for the URL branch)."""
    files = {"a/1.png": b"\x89PNG one", "a/sub/2.txt": b"two\r\n", "b/3.bin": b"",
             "top.json": b'{"k": 1}'}
    write_tree(str(tmp_path), files)
    write_tree(ram, files)

    def tree(base):
        out = []
        for d, dirs, names in fileio.walk(base):
            dirs.sort()
            for n in sorted(names):
                p = fileio.join(d, n)
                out.append((fileio.relpath(p, base).replace("\\", "/"), fileio.getsize(p),
                            fileio.read_bytes(p)))
        return out

    assert tree(ram) == tree(str(tmp_path)) and len(tree(ram)) == 4
    assert sorted(fileio.listdir(ram)) == sorted(fileio.listdir(str(tmp_path))) == \
        ["a", "b", "top.json"]
    assert [fileio.basename(p) for p in fileio.glob(fileio.join(ram, "[ab]", "*.png"))] == \
        ["1.png"]
    assert fileio.isdir(fileio.join(ram, "a")) and not fileio.isfile(fileio.join(ram, "a"))
    assert fileio.isfile(fileio.join(ram, "b/3.bin"))
    with pytest.raises(FileNotFoundError):
        fileio.read_bytes(fileio.join(ram, "nope.png"))
    with pytest.raises(FileNotFoundError):
        fileio.listdir(fileio.join(ram, "nope"))
    fileio.replace(fileio.join(ram, "top.json"), fileio.join(ram, "b", "moved.json"))
    assert fileio.read_text(fileio.join(ram, "b", "moved.json")) == '{"k": 1}'
    assert not fileio.exists(fileio.join(ram, "top.json"))


# --------------------------------------------------------------------------- publish rule

def test_publish_rule_on_ram(ram, tmp_path):
    """A version folder on ram:// counts only once published.json is there and every
    file it lists has its size: copied file by file (the object-store way), a version
    without the marker, or with a file still short, is skipped by resolve_version."""
    import shutil
    local = tmp_path / "3"
    local.mkdir()
    (local / mf.SAVED_MODEL_FILE).write_bytes(b"x" * 100)
    mf.write_labels(str(local), ["a", "b"])
    (tmp_path / "2").mkdir()
    shutil.copytree(local, tmp_path / "2", dirs_exist_ok=True)
    mf.publish(str(tmp_path / "2"))
    base = fileio.join(ram, "models", "m")
    for v in ("2", "3"):   # version 2 complete, 3 still without its marker
        for d, _dirs, names in fileio.walk(str(tmp_path / v)):
            for n in names:
                rel = fileio.relpath(fileio.join(d, n), str(tmp_path / v))
                fileio.makedirs(fileio.dirname(fileio.join(base, v, rel)))
                fileio.copy(fileio.join(d, n), fileio.join(base, v, rel))
    assert mf.list_versions(base) == [3, 2]
    assert "no published.json" in mf.unpublished_reason(fileio.join(base, "3"))
    assert mf.resolve_version(base) == (fileio.join(base, "2"), 2)

    mf.publish(fileio.join(base, "3"))        # the marker, written last, on ram://
    marker = json.loads(fileio.read_text(fileio.join(base, "3", mf.PUBLISHED_FILE)))
    assert marker["files"] == {mf.LABELS_FILE: 4, mf.SAVED_MODEL_FILE: 100}
    assert mf.resolve_version(base) == (fileio.join(base, "3"), 3)
    fileio.write_bytes(fileio.join(base, "3", mf.SAVED_MODEL_FILE), b"x" * 60)  # mid-copy
    assert "has 60 bytes" in mf.unpublished_reason(fileio.join(base, "3"))
    assert mf.resolve_version(base)[1] == 2
    assert mf.read_labels(fileio.join(base, "2")) == ["a", "b"]


def test_data_prep_on_ram_reads_in_process_and_writes_dataset_json_last(ram, monkeypatch):
    """data_prep from a ram:// folder to ram:// with --workers 2: worker processes would
    not see ram://, so the images are read in this process; the records hold the source
    bytes (PNGs pass through) with the folder's labels, and dataset.json is the last
    file moved into --out (the publish rule of a records folder)."""
    from data_prep.__main__ import main as data_prep_main

    src, out = fileio.join(ram, "src"), fileio.join(ram, "records")
    files = class_images(4)
    write_tree(src, files)
    moved = []
    real_replace = fileio.replace

    def spy(a, b):
        moved.append(str(b))
        real_replace(a, b)

    monkeypatch.setattr(fileio, "replace", spy)
    assert data_prep_main(["--format", "folders", "--input", src, "--out", out,
                           "--workers", "2", "--split-fractions", "train=0.5,test=0.5",
                           "--no-progress"]) == 0
    into_out = [p for p in moved if fileio.dirname(p) == out]
    assert into_out[-1] == fileio.join(out, records.DATASET_JSON)
    assert not [n for n in fileio.listdir(out) if n.startswith(".")]   # no staging left
    info = records.load_dataset_info(out)
    assert info["class_names"] == runs.CLASSES
    got = {}
    for split in ("train", "test"):
        for c in records.iter_cases(out, split):
            got[c.image_ids[0]] = (c.images[0], c.label_class)
    assert got == {rel: (data, runs.CLASSES.index(rel.split("/")[0]))
                   for rel, data in files.items()}
    assert sum(s["images"] for s in info["splits"].values()) == len(files)

    # --overwrite: the old dataset.json is the first thing removed, the new one the last
    # moved in, so no reader pairs a description with shards of another run
    removed, moved[:] = [], []
    real_remove = fileio.remove
    monkeypatch.setattr(fileio, "remove", lambda p: (removed.append(str(p)), real_remove(p)))
    assert data_prep_main(["--format", "folders", "--input", src, "--out", out, "--overwrite",
                           "--split-fractions", "train=1", "--no-progress"]) == 0
    assert removed[0] == fileio.join(out, records.DATASET_JSON)
    assert [p for p in moved if fileio.dirname(p) == out][-1] == \
        fileio.join(out, records.DATASET_JSON)
    assert set(records.load_dataset_info(out)["splits"]) == {"train"}
    assert not records_of(out, "test")
    assert len(list(records.iter_cases(out, "train"))) == len(files)


def test_data_prep_csv_manifest_and_images_on_ram(ram):
    """--format csv with the manifest and --images on ram:// (other folders): cases group
    the rows by case_id, a row whose image is missing is skipped (skipped.csv on ram://)."""
    from data_prep.__main__ import main as data_prep_main

    files = class_images(2, seed=3)
    write_tree(fileio.join(ram, "imgs"), files)
    rows = [(rel, f"case{i // 2}", rel.split("/")[0]) for i, rel in enumerate(sorted(files))]
    rows.append(("a/missing.png", "case9", "a"))
    manifest = fileio.join(ram, "meta", "m.csv")
    fileio.makedirs(fileio.dirname(manifest))
    fileio.write_text(manifest, "image,case_id,label\n" +
                      "".join(f"{r},{c},{lab}\n" for r, c, lab in rows))
    out = fileio.join(ram, "records")
    assert data_prep_main(["--format", "csv", "--input", manifest, "--images",
                           fileio.join(ram, "imgs"), "--out", out, "--split-fractions",
                           "train=1", "--no-progress"]) == 0
    cases = {c.case_id: c for c in records.iter_cases(out, "train")}
    want = {}
    for rel, case, lab in rows[:-1]:
        want.setdefault(case, ([], runs.CLASSES.index(lab)))[0].append(rel)
    assert {k: (c.image_ids, c.label_class) for k, c in cases.items()} == want
    assert all(c.images == [files[i] for i in c.image_ids] for c in cases.values())
    skipped = read_csv_url(fileio.join(out, "skipped.csv"))
    assert [(r["image_id"], r["case_id"]) for r in skipped] == [("a/missing.png", "case9")]


def test_score_sources_on_ram(ram):
    """score's image-folder and CSV-manifest sources on ram://: rows, labels from the
    folder names / the label column, a listed file that is missing is skipped, and the
    bytes read through the source's tf.data are the files' bytes (a TIFF, which
    TensorFlow cannot decode, goes through data_prep's reader and comes out a PNG)."""
    from PIL import Image

    from tfmicle.score.model import ScoringModel
    from tfmicle.score.sources import open_source

    model = ScoringModel("m", None, list(runs.CLASSES), "multiclass", 32, {}, None)
    files = class_images(2, seed=7)
    tif = io.BytesIO()
    Image.fromarray(np.full((8, 6, 3), 200, np.uint8)).save(tif, format="TIFF")
    files["c/scan.tif"] = tif.getvalue()
    write_tree(fileio.join(ram, "images"), files)

    src = open_source(fileio.join(ram, "images"), model)
    assert src.kind == "folder" and src.image_ids == sorted(files)
    assert list(src.labels) == [runs.CLASSES.index(i.split("/")[0]) for i in src.image_ids]
    got = {src.image_ids[int(el["index"])]: el["image"]
           for el in src.encoded().as_numpy_iterator()}
    assert {k: v for k, v in got.items() if k != "c/scan.tif"} == \
        {k: v for k, v in files.items() if k != "c/scan.tif"}
    assert np.all(np.asarray(Image.open(io.BytesIO(got["c/scan.tif"]))) == 200)

    manifest = fileio.join(ram, "images", "list.csv")
    fileio.write_text(manifest, "image,label\na/img1.png,a\nb/gone.png,b\nc/img0.png,\n")
    src = open_source(manifest, model)
    assert src.kind == "csv" and src.image_ids == ["a/img1.png", "c/img0.png"]
    assert list(src.labels) == [0, -1]
    assert src.skipped == [("b/gone.png", "b/gone.png", "file not found")]
    assert [el["image"] for el in src.encoded().as_numpy_iterator()] == \
        [files["a/img1.png"], files["c/img0.png"]]


def test_beam_runner_refuses_ram_out_in_one_line(ram, capsys):
    """Beam's workers (other processes) cannot see ram://: exit 2, one line, and --out
    is left as it was (no staging folder)."""
    from data_prep.__main__ import main as data_prep_main

    src, out = fileio.join(ram, "src"), fileio.join(ram, "out")
    write_tree(src, class_images(1))
    assert data_prep_main(["--format", "folders", "--input", src, "--out", out,
                           "--runner", "beam", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ram://" in err[0] and "--runner local" in err[0], err
    assert not fileio.exists(out) or fileio.listdir(out) == []


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_end_to_end_on_ram(ram, tmp_path, monkeypatch):
    """data_prep -> records -> pretrain (+ resume) -> fine-tune -> export -> score ->
    serving, every user path on ram:// (in-process), nothing written to the local disk."""
    from fastapi.testclient import TestClient

    from data_prep.convert import ConvertConfig, convert
    from serving.app import create_app
    from serving.config import ServingConfig
    from tfmicle.config import load_config
    from tfmicle.data.pipeline import PipelineConfig, evaluation
    from tfmicle.export import export
    from tfmicle.score import ScoreOptions, score
    from tfmicle.train.finetune import finetune
    from tfmicle.train.pretrain import pretrain

    monkeypatch.chdir(tmp_path)   # a URL taken for a local path would appear here ("ram:/")

    # data_prep: ram:// folders -> ram:// records
    src, data = fileio.join(ram, "src"), fileio.join(ram, "records")
    files = class_images(8, seed=5)
    write_tree(src, files)
    info = convert(ConvertConfig("folders", src, data, split_fractions={"train": 0.5,
                                                                        "test": 0.5},
                                 workers=2))
    test_ids = {i for c in records.iter_cases(data, "test") for i in c.image_ids}
    assert 0 < len(test_ids) == info["splits"]["test"]["images"] < len(files)
    seen = set()   # the training / evaluation pipeline reads the same split from ram://
    for batch in evaluation(PipelineConfig(data, "test", batch_size=4, image_size=32)):
        assert batch["image"].shape[1:] == (32, 32, 3)
        for i, lab in zip(batch["image_id"].numpy(), batch["label_class"].numpy()):
            i = i.decode()
            seen.add(i)
            assert lab == runs.CLASSES.index(i.split("/")[0])
    assert seen == test_ids

    # pretrain: tiny SimCLR, data.dir and model_dir on ram://; a rerun with a larger
    # budget resumes from the ram:// checkpoint (its optimizer step), not from scratch
    pre = fileio.join(ram, "runs", "pre")
    pre_set = [f"data.dir={data}", f"model_dir={pre}", "method=simclr", "train.batch_size=8",
               "train.checkpoint_steps=2", "train.log_steps=1", "model.global_bn=false"]
    first = pretrain(load_config(runs.TINY, pre_set + ["train.train_steps=2"]), verbose=0)
    assert (first["start_step"], first["end_step"]) == (0, 2)
    assert first["checkpoint"] == fileio.join(pre, "checkpoints", "ckpt-2")
    again = pretrain(load_config(runs.TINY, pre_set + ["train.train_steps=3"]), verbose=0)
    assert (again["start_step"], again["end_step"]) == (2, 3)
    assert tf.train.latest_checkpoint(fileio.join(pre, "checkpoints")).endswith("ckpt-3")
    saved = load_config(fileio.join(pre, "config.yaml"))
    assert (saved.model_dir, saved.data.dir, saved.train.train_steps) == (pre, data, 3)
    assert fileio.listdir(fileio.join(pre, "logs"))        # TensorBoard, on ram:// too

    # fine-tune from the ram:// pretraining run into a ram:// run folder
    ft = fileio.join(ram, "runs", "ft")
    res = finetune(load_config(runs.FT_TINY, [
        f"data.dir={data}", f"model_dir={ft}", "data.eval_split=test",
        "finetune.init=checkpoint", f"finetune.checkpoint={pre}", "train.train_steps=4",
        "finetune.eval_every_steps=2", "train.checkpoint_steps=2", "train.log_steps=2",
        "finetune.best_metric=val_loss"]), verbose=0)
    assert res["end_step"] == 4
    info_json = json.loads(fileio.read_text(fileio.join(ft, "finetune.json")))
    assert info_json["class_names"] == runs.CLASSES and info_json["data_dir"] == data
    assert info_json["checkpoint"] == pre
    rows_v = [json.loads(x) for x in fileio.read_text(fileio.join(ft, "validation.jsonl"))
              .splitlines()]
    assert [r["step"] for r in rows_v] == [2, 4]       # appended on a store with no append
    best_row = min(rows_v, key=lambda r: r["val_loss"])
    best = json.loads(fileio.read_text(fileio.join(ft, "best", "state.json")))
    assert best["step"] == best_row["step"] and best["value"] == pytest.approx(
        best_row["val_loss"])
    assert fileio.exists(fileio.join(ft, "best", "ckpt.index"))
    assert not (tmp_path / "ram:").exists() and not list(tmp_path.iterdir())

    # export from the ram:// run folder: the best checkpoint; the version folder written
    # in place, published.json the last write
    models = fileio.join(ram, "models", "tiny")
    written = []
    real_write = fileio.write_text
    monkeypatch.setattr(fileio, "write_text", lambda p, t: (written.append(str(p)),
                                                            real_write(p, t))[1])
    exp = export(ft, models)
    monkeypatch.setattr(fileio, "write_text", real_write)
    assert exp["path"] == fileio.join(models, "1") and fileio.listdir(models) == ["1"]
    assert written[-1] == fileio.join(models, "1", mf.PUBLISHED_FILE)
    assert mf.unpublished_reason(exp["path"]) is None
    meta = json.loads(fileio.read_text(fileio.join(exp["path"], mf.METADATA_FILE)))
    assert meta["checkpoint"] == fileio.join(ft, "best", "ckpt")
    assert meta["step"] == best["step"] and meta["class_names"] == runs.CLASSES

    # score: ram:// model + ram:// records -> ram:// out; probabilities are the model's
    out = fileio.join(ram, "scores")
    result = score(models, data, out, ScoreOptions(split="test", replicates=20))
    rows = read_csv_url(fileio.join(out, "predictions_images.csv"))
    assert {r["image_id"] for r in rows} == test_ids
    loaded = tf.saved_model.load(exp["path"]).signatures[mf.SIGNATURE]
    want = loaded(images=tf.constant([files[r["image_id"]] for r in rows]))["probabilities"]
    got = np.array([[float(r[f"prob_{c}"]) for c in runs.CLASSES] for r in rows])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    metrics = json.loads(fileio.read_text(fileio.join(out, "metrics.json")))
    labels = np.array([runs.CLASSES.index(r["label"]) for r in rows])
    assert metrics["image"]["top1_accuracy"] == pytest.approx(
        float(np.mean(np.argmax(got, axis=1) == labels)), abs=1e-9)
    assert fileio.isfile(result["report"]) and result["report"].startswith("ram://")

    # serving: the repository on ram://; version 2 copied in file by file, served only
    # once its marker is there
    app = create_app(ServingConfig(model_base_path=models, poll_seconds=0.1))
    image = base64.b64encode(files[rows[0]["image_id"]]).decode()
    with TestClient(app) as c:
        def predict():
            r = c.post("/v1/models/tiny:predict", json={"instances": [{"b64": image}]})
            assert r.status_code == 200, r.text
            return r.json()

        def version():
            status = c.get("/v1/models/tiny").json()["model_version_status"]
            return int(next(s["version"] for s in status if s["state"] == "AVAILABLE"))

        assert version() == 1
        np.testing.assert_allclose(predict()["predictions"][0], want.numpy()[0], atol=1e-5)
        v2 = fileio.join(models, "2")
        for d, _dirs, names in fileio.walk(exp["path"]):
            for n in names:
                if n != mf.PUBLISHED_FILE:
                    dst = fileio.join(v2, fileio.relpath(fileio.join(d, n), exp["path"]))
                    fileio.makedirs(fileio.dirname(dst))
                    fileio.copy(fileio.join(d, n), dst)
        time.sleep(0.6)      # several polls: unpublished, so not loaded
        assert version() == 1
        fileio.copy(fileio.join(exp["path"], mf.PUBLISHED_FILE),
                    fileio.join(v2, mf.PUBLISHED_FILE))
        wait_for(lambda: version() == 2, what="version 2 on ram://")
        np.testing.assert_allclose(predict()["predictions"][0], want.numpy()[0], atol=1e-5)

    # the fine-tuning run folder copies out with TensorFlow's own walk, as any tool
    # would copy it (a file beside a folder of the same prefix once listed a phantom)
    local = tmp_path / "ft_copy"
    copied = []
    for d, _dirs, names in tf.io.gfile.walk(ft):
        for n in names:
            src = d.rstrip("/") + "/" + n
            dst = local / src[len(ft) + 1:]
            dst.parent.mkdir(parents=True, exist_ok=True)
            tf.io.gfile.copy(src, str(dst))
            copied.append(src[len(ft) + 1:])
    assert {"config.yaml", "finetune.json", "validation.jsonl", "best/state.json",
            "best/ckpt.index"} <= set(copied), copied
    from tfmicle.rundir import read_best
    assert read_best(str(local)) == best
    reader = tf.train.load_checkpoint(str(local / "best" / "ckpt"))
    assert reader.get_variable_to_shape_map()


def test_read_best_reads_this_release_and_earlier_run_folders(tmp_path):
    from tfmicle.rundir import read_best
    assert read_best(str(tmp_path)) == {}
    (tmp_path / "best.json").write_text('{"step": 4, "value": 0.5}')    # an earlier release
    assert read_best(str(tmp_path)) == {"step": 4, "value": 0.5}
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "state.json").write_text('{"step": 8, "value": 0.25}')
    assert read_best(str(tmp_path)) == {"step": 8, "value": 0.25}


def test_best_state_is_written_before_any_best_checkpoint(tmp_path):
    """A validation whose metric is undefined keeps no checkpoint, but its state must
    still be written (best/ does not exist yet)."""
    from tfmicle.rundir import BEST_JSON, read_best, write_json
    write_json(str(tmp_path / BEST_JSON), {"evals_since_best": 1})
    assert read_best(str(tmp_path)) == {"evals_since_best": 1}
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["state.json"]
