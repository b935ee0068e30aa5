"""TFDS as a data source (data.source: tfds; score --data tfds:NAME), on mocked TFDS
datasets (tfds.testing.mock_data: no download). The fake splits are built here, so
every expectation (case grouping, labels, counts, pixels) comes from the fake data,
not from the code under test."""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds  # the dev extra installs it (setup.cfg)

from conftest import png_bytes
from tfmicle.config import ConfigError, load_config
from tfmicle.data import records
from tfmicle.data.augment import preset
from tfmicle.data.pipeline import PipelineConfig, count_items, micle_pairs, read_cases
from tfmicle.data.tfds_source import TfdsError, TfdsSource, builder

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
TINY = os.path.join(CONFIGS, "tiny.yaml")
FT_TINY = os.path.join(CONFIGS, "finetune_tiny.yaml")

# smallnorb: Image "image", ClassLabel "label_category" (5) and "instance" (10), used
# here as the case feature. Example i: instance INSTANCE[i], a constant grey image of
# value 10 + 20 i (so a view's pixels tell which example it came from).
INSTANCE = [0, 1, 0, 2, 1, 0, 3, 3, 4, 0]


def grey(i: int) -> int:
    return 10 + 20 * i


def fake_tfds(make_examples):
    """tfds.testing.mock_data whose splits are make_examples(split) (a list of feature
    dicts, images PNG-encoded as SkipDecoding leaves them), each with a tfds_id."""
    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        exs = make_examples(str(split))
        cols = {k: [e[k] for e in exs] for k in exs[0]}
        cols["tfds_id"] = [f"{self.name}-{split}__{i}" for i in range(len(exs))]
        return tf.data.Dataset.from_tensor_slices(cols)
    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def smallnorb(split: str) -> list[dict]:
    out = []
    for i, inst in enumerate(INSTANCE):
        img = png_bytes(np.full((12, 12, 1), grey(i), np.uint8))
        out.append({"image": img, "image2": img, "instance": inst,
                    "label_category": inst % 5, "label_azimuth": 0, "label_elevation": 0,
                    "label_lighting": 0})
    return out


def pixel(encoded: bytes) -> int:
    return int(tf.io.decode_png(encoded).numpy().max())


def test_examples_are_their_own_cases_with_tfds_ids_and_labels():
    with fake_tfds(smallnorb):
        src = TfdsSource("smallnorb", label_key="label_category")
        cases = list(read_cases(PipelineConfig("", "train", tfds=src), shuffle=False)
                     .as_numpy_iterator())
        assert count_items(PipelineConfig("", "train", tfds=src), "case") == 10
    assert len(cases) == 10
    record = records.parse_case(records.encode_case("c", [png_bytes(np.zeros((2, 2, 3),
                                                                            np.uint8))], ["i"])
                                .SerializeToString())
    assert set(cases[0]) == set(record)  # the records reader's structure
    for i, c in enumerate(cases):
        tid = f"smallnorb-train__{i}".encode()
        assert c["case_id"] == c["patient_id"] == tid and list(c["image_ids"]) == [tid]
        assert len(c["images"]) == 1 and pixel(c["images"][0]) == grey(i)
        assert c["label_class"] == INSTANCE[i] % 5 and c["label_multi"].size == 0
        assert c["meta"].shape == (1, 0) and c["meta_keys"].size == 0


def test_case_key_groups_examples_and_micle_pairs_two_images_of_a_case():
    want = {}  # instance -> greys of its examples, from the fake data
    for i, inst in enumerate(INSTANCE):
        want.setdefault(inst, []).append(grey(i))
    with fake_tfds(smallnorb):
        src = TfdsSource("smallnorb", label_key="label_category", case_key="instance")
        cfg = PipelineConfig("", "train", batch_size=5, image_size=8, tfds=src)
        cases = list(read_cases(cfg, shuffle=False).as_numpy_iterator())
        assert count_items(cfg, "case") == 5 and count_items(cfg, "image") == 10
        batches = list(micle_pairs(cfg, preset("none", crop=False)).take(4)
                       .as_numpy_iterator())
    got = {int(c["case_id"]): sorted(pixel(b) for b in c["images"]) for c in cases}
    assert got == {k: sorted(v) for k, v in want.items()}
    for c in cases:
        assert c["label_class"] == int(c["case_id"]) % 5
    for b in batches:
        v1 = np.rint(b["view1"][..., 0].mean(axis=(1, 2)) * 255).astype(int)
        v2 = np.rint(b["view2"][..., 0].mean(axis=(1, 2)) * 255).astype(int)
        owners = [next(k for k, g in want.items() if a in g) for a in v1]
        assert sorted(owners) == sorted(want)  # every case once per batch of 5
        for a, z, k in zip(v1, v2, owners):
            assert z in want[k]
            assert (a != z) == (len(want[k]) >= 2)  # two different images when it can
        assert b["label"].tolist() == [k % 5 for k in owners]


def mnist(n_train: int = 16, n_test: int = 12):
    """Fake mnist: label i % 3, images noisy with a label-dependent brightness."""
    def make(split: str) -> list[dict]:
        n, seed = (n_test, 1) if split.startswith("test") else (n_train, 0)
        rng = np.random.default_rng(seed)
        return [{"image": png_bytes(np.clip(rng.normal(60 + 70 * (i % 3), 30, (28, 28, 1)),
                                            0, 255).astype(np.uint8)),
                 "label": i % 3} for i in range(n)]
    return make


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    from tfmicle.train import cli as train_cli
    from tfmicle.train.finetune import finetune
    from tfmicle.train.pretrain import pretrain
    base = ["data.source=tfds", f"model_dir={tmp_path / 'run'}"]
    with fake_tfds(mnist()):
        with pytest.raises(ConfigError, match="needs data.tfds.case_key"):
            pretrain(load_config(TINY, base + ["data.tfds.name=mnist", "method=micle"]))
        with pytest.raises(TfdsError, match="no image feature 'picture'"):
            builder(TfdsSource("mnist", image_key="picture"))
        with pytest.raises(ConfigError, match="slice the split"):
            finetune(load_config(FT_TINY, base + ["data.tfds.name=mnist",
                                                  "data.label_fraction=0.5"]))
        rc = train_cli.main(["--config", TINY, "--set", "data.source=tfds",
                             "--model-dir", str(tmp_path / "r2")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == ["tfmicle.train: error: data.source is tfds but "
                                   "data.tfds.name is not set (e.g. --set "
                                   "data.tfds.name=imagenet2012)"]
    with pytest.raises(ConfigError, match="not one of records, tfds"):
        load_config(TINY, ["data.source=hub"])


@pytest.mark.slow
def test_pretrain_finetune_export_score_on_a_tfds_dataset(tmp_path, capsys):
    """SimCLR pretraining on fake mnist (the epoch length from the 16 TFDS examples),
    fine-tuning from it with validation on the test split, export, and scoring the
    test split as tfds:mnist: rows, ids and labels are the fake data's and the
    probabilities are serving_default's on the same bytes."""
    from tfmicle.export import export
    from tfmicle.score import job as score_job
    from tfmicle.score import cli as score_cli
    from tfmicle.train.finetune import finetune
    from tfmicle.train.pretrain import pretrain
    tf_args = ["data.source=tfds", "data.tfds.name=mnist"]
    with fake_tfds(mnist()):
        pre = pretrain(load_config(TINY, tf_args + [
            f"model_dir={tmp_path / 'pre'}", "method=simclr", "train.batch_size=8",
            "train.train_steps=0", "train.train_epochs=1", "train.checkpoint_steps=2",
            "train.log_steps=1", "model.global_bn=false"]), verbose=0)
        assert pre["total_steps"] == pre["end_step"] == 2  # ceil(1 epoch x 16 / 8)
        assert all(math.isfinite(v) for v in pre["final_metrics"].values())

        ft = finetune(load_config(FT_TINY, tf_args + [
            f"model_dir={tmp_path / 'ft'}", "data.eval_split=test", "finetune.init=checkpoint",
            f"finetune.checkpoint={tmp_path / 'pre'}", "train.train_steps=2",
            "finetune.eval_every_steps=2", "train.checkpoint_steps=2", "train.log_steps=2"]),
            verbose=0)
        info = json.load(open(tmp_path / "ft" / "finetune.json"))
        assert info["class_names"] == [str(d) for d in range(10)]  # mnist's ClassLabel
        assert (info["train_images"], info["train_cases"]) == (16, 16)
        assert info["data_dir"] == "tfds:mnist" and ft["best"]["step"] == 2

        exp = export(str(tmp_path / "ft"), str(tmp_path / "models" / "m"))
        out = tmp_path / "scored"
        result = score_job.score(str(tmp_path / "models" / "m"), "tfds:mnist", str(out),
                                 score_job.ScoreOptions(split="test", replicates=0))
        rc = score_cli.main(["--model", str(tmp_path / "models" / "m"), "--data",
                             "tfds:mnist", "--image-key", "picture", "--out",
                             str(tmp_path / "bad"), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("tfmicle.score: error: tfds:mnist: no image "
                                          "feature 'picture'")
    fake = mnist()("test")
    with open(out / "predictions_images.csv") as f:
        rows = list(csv.DictReader(f))
    assert result["runs"][0]["scored"] == len(rows) == 12
    assert [r["image_id"] for r in rows] == [f"mnist-test__{i}" for i in range(12)]
    assert [r["case_id"] for r in rows] == [r["image_id"] for r in rows]
    assert [r["label"] for r in rows] == [str(e["label"]) for e in fake]
    probs = np.array([[float(r[f"prob_{d}"]) for d in range(10)] for r in rows])
    served = tf.saved_model.load(exp["path"]).signatures["serving_default"](
        images=tf.constant([e["image"] for e in fake]))["probabilities"].numpy()
    np.testing.assert_allclose(probs, served, atol=1e-5)
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["num_images"] == 12


def test_imagenet_config_reads_imagenet2012_through_tfds():
    """configs/imagenet_simclr_r50_1x.yaml names TFDS's imagenet2012 (1000 ClassLabel
    classes, an Image feature) and its splits; mocked, so nothing is downloaded."""
    from tfmicle.build import data_source
    cfg = load_config(os.path.join(CONFIGS, "imagenet_simclr_r50_1x.yaml"))
    assert (cfg.mode, cfg.method, cfg.data.source) == ("pretrain", "simclr", "tfds")
    with tfds.testing.mock_data(num_examples=3):
        info, base = data_source(cfg, (cfg.data.train_split, cfg.data.eval_split))
        assert count_items(base, "image") == 3
    assert len(info["class_names"]) == 1000 and info["task"] == "multiclass"
    assert base.tfds.spec == "tfds:imagenet2012" and base.batch_size == 4096


def test_a_prepared_tfds_dataset_on_disk_groups_cases_and_checks_splits(tmp_path):
    """Not mocked: a small dataset built by TFDS itself (TfDataBuilder writes its
    tfrecord shards, shuffled, and dataset_info.json), then read back by name from its
    data_dir: each patient's images (PNG, lossless) come back as one case, counts come
    from the metadata, TFDS slicing works and an unknown split is a one-line error."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (7, 10, 12, 3)).astype(np.uint8)
    patients = [f"p{i % 3}" for i in range(7)]
    labels = [int(p[1]) % 2 for p in patients]  # a patient's images share its label
    feats = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=["benign", "malignant"]),
        "patient": tfds.features.Text()})
    split = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels, "patient": patients})
    tfds.dataset_builders.TfDataBuilder(
        name="tiny_derm_disk", version="1.0.0", split_datasets={"train": split, "test": split},
        features=feats, data_dir=str(tmp_path)).download_and_prepare()

    src = TfdsSource("tiny_derm_disk", case_key="patient", data_dir=str(tmp_path))
    cfg = PipelineConfig("", "train", tfds=src)
    cases = list(read_cases(cfg, shuffle=False).as_numpy_iterator())
    got = {c["case_id"].decode(): sorted(tf.io.decode_png(b).numpy().tobytes()
                                         for b in c["images"]) for c in cases}
    want = {p: sorted(images[i].tobytes() for i in range(7) if patients[i] == p)
            for p in set(patients)}
    assert got == want
    assert {c["case_id"].decode(): int(c["label_class"]) for c in cases} == \
        {p: int(p[1]) % 2 for p in want}
    assert (count_items(cfg, "case"), count_items(cfg, "image")) == (3, 7)
    assert count_items(PipelineConfig("", "train[:4]", tfds=TfdsSource(
        "tiny_derm_disk", data_dir=str(tmp_path))), "image") == 4
    from tfmicle.build import data_source
    cfg2 = load_config(TINY, ["data.source=tfds", "data.tfds.name=tiny_derm_disk",
                              f"data.tfds.data_dir={tmp_path}", "data.eval_split=valid"])
    with pytest.raises(TfdsError, match=r"^split 'valid' not in tfds:tiny_derm_disk "
                                        r"\(has: train, test\)$"):
        data_source(cfg2, (cfg2.data.train_split, cfg2.data.eval_split))
    info, _ = data_source(cfg2, ("train",))
    assert info["class_names"] == ["benign", "malignant"]


@pytest.mark.slow
def test_each_epoch_reads_the_parts_of_a_prepared_split_in_a_new_order(tmp_path):
    """A split of 4 TFDS shards is read in 4 parts (TFDS's own even_splits, read here
    through tfds.load as the reference); with no window shuffle (buffer 1) an epoch is
    the 4 parts one after another, in an order drawn per epoch, and a stream restarted
    at step 3 continues the uninterrupted one."""
    images = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3),
                                                                           np.uint8)
    feats = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(4, 4, 3)),
                                        "label": tfds.features.ClassLabel(num_classes=2)})
    split = tf.data.Dataset.from_tensor_slices({"image": images, "label": [0, 1] * 6})
    tfds.dataset_builders.TfDataBuilder(
        name="sharded", version="1.0.0", split_datasets={"train": split}, features=feats,
        data_dir=str(tmp_path)).download_and_prepare(
            download_config=tfds.download.DownloadConfig(num_shards=4))
    parts = []
    for p in tfds.even_splits("train", n=4):
        ds = tfds.load("sharded", split=p, data_dir=str(tmp_path),
                       read_config=tfds.ReadConfig(add_tfds_id=True))
        parts.append(tuple(x["tfds_id"].decode() for x in ds.as_numpy_iterator()))
    assert sorted(len(p) for p in parts) == [3, 3, 3, 3]

    from tfmicle.data.pipeline import epoch_stream
    cfg = PipelineConfig("", "train", batch_size=4, shuffle_buffer=1, seed=5,
                         tfds=TfdsSource("sharded", data_dir=str(tmp_path)))
    ids = [x["case_id"].decode() for x, _ in epoch_stream(cfg, "case", 12).take(60)
           .as_numpy_iterator()]
    orders = []
    for e in range(5):
        epoch = ids[12 * e:12 * (e + 1)]
        chunks = [tuple(epoch[i:i + 3]) for i in range(0, 12, 3)]
        assert sorted(chunks) == sorted(parts)  # whole parts, each once
        orders.append(tuple(parts.index(c) for c in chunks))
    assert len(set(orders)) > 1  # the part order changes between epochs
    resumed = [x["case_id"].decode() for x, _ in epoch_stream(cfg, "case", 12, start_step=3)
               .take(20).as_numpy_iterator()]
    assert resumed == ids[12:32]
