"""HAM10000's real layout through the product's path, on a slice of ../shared/data/ham10000
(tests/conftest.py ham_slice: tens of lesions): near-identical photo groups, MICLe pairs
of distinct photos, no same-lesion negatives, shards in mixed order, the fine-tuning
order and its resume, class weights, and data_prep -> pretrain -> fine-tune -> export ->
score with subgroups."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmicle.data import records
from tfmicle.data.augment import AugmentConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _convert(src: str, out: str, **kw) -> dict:
    from data_prep.convert import ConvertConfig, convert
    cfg = ConvertConfig(format="ham10000", input=src, out=out, overwrite=True, workers=1,
                        split_fractions={"train": 0.6, "validation": 0.2, "test": 0.2}, **kw)
    return convert(cfg)


def _listed_pairs(src: str) -> list[dict]:
    with open(os.path.join(src, "near_duplicate_pairs.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ham_records(ham_slice, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ham_records") / "rec")
    _convert(ham_slice, out)
    return out


def _all_cases(data_dir: str) -> dict[str, records.Case]:
    info = records.load_dataset_info(data_dir)
    return {c.case_id: c for s in info["splits"] for c in records.iter_cases(data_dir, s)}


def test_listed_near_identical_pairs_are_in_the_records(ham_slice, ham_records):
    cases = _all_cases(ham_records)
    pairs = _listed_pairs(ham_slice)
    assert pairs, "the slice must hold listed pairs"
    written = {(c.case_id, frozenset((c.image_ids[a], c.image_ids[b])))
               for c in cases.values() for a, b in c.near_pairs}
    listed = {(p["lesion_id"], frozenset((p["image_a"], p["image_b"]))) for p in pairs}
    assert written == listed
    # lesions without a listed pair are written as before: no pairs at all
    others = [c for c in cases.values() if c.case_id not in {p["lesion_id"] for p in pairs}]
    assert others and all(c.near_pairs == [] for c in others)
    info = records.load_dataset_info(ham_records)
    assert info["schema_version"] == 3
    assert info["near_duplicates"]["applied"] == len(pairs)


def test_without_the_pairs_file_no_pair_is_written(ham_slice, tmp_path):
    import shutil
    src = tmp_path / "ham"
    shutil.copytree(ham_slice, src)
    os.remove(src / "near_duplicate_pairs.csv")
    info = _convert(str(src), str(tmp_path / "rec"))
    assert info["near_duplicates"] == {}
    assert all(c.near_pairs == [] for c in _all_cases(str(tmp_path / "rec")).values())


@pytest.mark.slow
def test_micle_positives_are_distinct_photos_never_a_listed_pair(ham_slice, ham_records):
    """micle_pick on every real case, 64 draws each: two different images, never a listed
    near-identical pair when the first image has a partner that is not listed with it;
    the same image twice only when every other image is listed with it."""
    from tfmicle.data.pipeline import micle_pick
    listed = {frozenset((p["image_a"], p["image_b"])) for p in _listed_pairs(ham_slice)}
    pick = tf.function(micle_pick)
    seen = 0
    for c in _all_cases(ham_records).values():
        ids = c.image_ids
        pairs = tf.constant(np.array(c.near_pairs, np.int64).reshape(-1, 2))
        for s in range(64):
            i, j = (int(v) for v in pick(tf.constant(len(ids)), tf.constant([s, 7], tf.int64),
                                         pairs))
            free = [k for k in range(len(ids))
                    if k != i and frozenset((ids[i], ids[k])) not in listed]
            if free:
                assert j in free
                seen += 1
            else:
                assert j == i
    assert seen > 0


def test_micle_pick_draws_uniformly_over_the_other_photos():
    """4 images, pairs (0, 1) and (1, 2) listed: from image 0 the partner is 2 or 3, half
    the time each; from 1 it is 3; from 2 it is 0 or 3; from 3 any of 0, 1, 2 (a third
    each): counts of 3,000 draws."""
    from tfmicle.data.pipeline import micle_pick
    pick = tf.function(micle_pick)
    counts = np.zeros((4, 4))
    for s in range(3000):
        i, j = pick(tf.constant(4), tf.constant([s, 1], tf.int64),
                    tf.constant([[0, 1], [1, 2]], tf.int64))
        counts[int(i), int(j)] += 1
    row = counts / counts.sum(1, keepdims=True)
    np.testing.assert_allclose(row[0], [0, 0, 0.5, 0.5], atol=0.1)
    np.testing.assert_allclose(row[1], [0, 0, 0, 1])
    np.testing.assert_allclose(row[2], [0.5, 0, 0, 0.5], atol=0.1)
    np.testing.assert_allclose(row[3], [1 / 3, 1 / 3, 1 / 3, 0], atol=0.1)
    np.testing.assert_allclose(counts.sum(1) / 3000, [0.25] * 4, atol=0.05)


def test_micle_pick_without_pairs_is_the_old_draw():
    """No pairs: j = (i + off) % n with off uniform in [1, n) from the second seed, the
    draw of every earlier release (so earlier results replay)."""
    from tfmicle.data.pipeline import micle_pick
    for n in (1, 2, 5):
        for s in range(20):
            seed = tf.constant([s, 3], tf.int64)
            i, j = micle_pick(tf.constant(n), seed, tf.zeros([0, 2], tf.int64))
            i0 = tf.random.stateless_uniform([], seed, 0, n, dtype=tf.int32)
            off = tf.random.stateless_uniform(
                [], tf.random.experimental.stateless_fold_in(seed, 1), 1, max(n, 2),
                dtype=tf.int32)
            assert int(i) == int(i0)
            assert int(j) == (int(i0) + int(off)) % n if n >= 2 else int(j) == int(i0)


@pytest.mark.slow
def test_micle_batches_hold_no_same_lesion_negative(ham_records):
    from tfmicle.data.pipeline import PipelineConfig, micle_pairs
    cfg = PipelineConfig(ham_records, "train", batch_size=16, image_size=32, seed=3)
    for b in micle_pairs(cfg, AugmentConfig()).take(6):
        assert float(tf.reduce_sum(b["same_case"])) == 0.0


@pytest.mark.slow
def test_shards_mix_a_label_sorted_manifest(tmp_path, caplog):
    """200 cases listed sorted by label (HAM10000's metadata is sorted by diagnosis),
    written in 4 shards: in record order the labels change about as often as in a random
    order (expected 100 changes; sorted: 1), and a pipeline with a buffer of 16 gets
    batches of both labels; the small buffer is warned about."""
    from conftest import png_bytes
    from data_prep.convert import ConvertConfig, convert
    from data_prep.manifest import FormatOptions
    img = tmp_path / "img"
    img.mkdir()
    rows = ["image,case_id,label"]
    rng = np.random.default_rng(0)
    for n in range(200):
        (img / f"{n}.png").write_bytes(png_bytes(rng.integers(0, 255, (8, 8, 3), np.uint8)))
        rows.append(f"{n}.png,c{n:03d},{'a' if n < 100 else 'b'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = str(tmp_path / "rec")
    convert(ConvertConfig(format="csv", input=str(tmp_path / "m.csv"), out=out,
                          format_options=FormatOptions(images=str(img)),
                          split_fractions={"train": 1.0}, workers=1, shard_mb=0.002))
    assert len(records.list_shards(out, "train")) >= 4
    from tfmicle.data.pipeline import PipelineConfig, read_cases, supervised
    order = [int(c["label_class"]) for c in
             read_cases(PipelineConfig(out, "train"), shuffle=False).as_numpy_iterator()]
    changes = int(np.sum(np.diff(order) != 0))
    assert 70 <= changes <= 130, changes
    with caplog.at_level("WARNING"):
        ds = supervised(PipelineConfig(out, "train", batch_size=16, image_size=8,
                                       shuffle_buffer=16), AugmentConfig(crop=False))
        labels = [b[1].numpy() for b in ds.take(12)]
    assert "shuffle buffer 16 < the 200" in caplog.text
    means = np.array([lab.mean() for lab in labels])
    assert ((means > 0) & (means < 1)).mean() >= 0.75, means


@pytest.mark.slow
def test_supervised_order_is_per_epoch_and_resumes(tiny_records):
    """Each epoch of the fine-tuning stream holds every labeled image once (a seeded
    permutation), and a stream started at step k equals the uninterrupted one from k."""
    from tfmicle.data.pipeline import PipelineConfig, epoch_stream, supervised
    cfg = PipelineConfig(tiny_records, "train", batch_size=4, image_size=16, seed=5)
    n = sum(1 for c in records.iter_cases(tiny_records, "train")
            for _ in c.images if c.label_class >= 0)
    items = [el["image_id"] for el, _ in epoch_stream(
        cfg, "image", n, keep=lambda el: el["label_class"] >= 0).take(2 * (n // 4) * 4)
        .as_numpy_iterator()]
    per = (n // 4) * 4
    for e in range(2):
        ep = items[e * per:(e + 1) * per]
        assert len(set(ep)) == len(ep)            # no image twice within an epoch
    assert items[:per] != items[per:2 * per]      # a new order each epoch
    aug = AugmentConfig(crop=True)
    full = [b[0].numpy() for b in supervised(cfg, aug, num_items=n).take(7)]
    resumed = [b[0].numpy() for b in supervised(cfg, aug, num_items=n, start_step=4).take(3)]
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a, b)


def test_balanced_class_weights_and_weighted_loss():
    from tfmicle.tasks import balanced_class_weights, multiclass_loss
    np.testing.assert_allclose(balanced_class_weights([6, 2, 0, 4]), [12 / 18, 2.0, 0.0, 1.0])
    labels = np.array([0, 1, -1, 2])
    logits = np.array([[2.0, 0.5, 0.1], [0.2, 0.3, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    w = np.array([0.5, 2.0, 9.0, 1.0])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ce = -np.log(p[[0, 1, 3], labels[[0, 1, 3]]])
    expected = (ce * w[[0, 1, 3]]).sum() / 3
    got = float(multiclass_loss(tf.constant(labels), tf.constant(logits, tf.float32),
                                tf.constant(w, tf.float32)))
    assert got == pytest.approx(expected, rel=1e-5)


