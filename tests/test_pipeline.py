"""Pipelines: MICLe pair sampling, SimCLR pairs, eval preprocessing, augmentation."""
import collections

import numpy as np
import pytest
import tensorflow as tf

from conftest import png_bytes, write_records
from tfmicle.data.augment import AugmentConfig, augment, preprocess_eval, preset
from tfmicle.data.pipeline import PipelineConfig, evaluation, micle_pairs, micle_pick, simclr_pairs

NO_AUG = preset("none")


def _id_image(k: int, size: int = 24) -> bytes:
    """A constant image whose colour encodes k (k < 216)."""
    a = np.zeros((size, size, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 40 * (k % 6), 40 * ((k // 6) % 6), 40 * (k // 36)
    return png_bytes(a)


def _decode_id(view: np.ndarray) -> int:
    r, g, b = np.round(view.mean(axis=(0, 1)) * 255 / 40).astype(int)
    return int(r + 6 * g + 36 * b)


@pytest.fixture(scope="module")
def id_records(tmp_path_factory):
    """Cases of 1, 2, 3 and 5 images; every image has a unique colour id."""
    d = str(tmp_path_factory.mktemp("idrec"))
    cases, k = [], 0
    for c, n in enumerate([1, 2, 3, 5, 1, 2]):
        ids = list(range(k, k + n))
        k += n
        cases.append({"case_id": f"c{c}", "images": [_id_image(i) for i in ids],
                      "image_ids": [str(i) for i in ids], "label_class": c % 2})
    write_records(d, "train", cases, ["x", "y"], num_shards=2)
    owner = {i: c["case_id"] for c in cases for i in map(int, c["image_ids"])}
    sizes = {c["case_id"]: len(c["images"]) for c in cases}
    return d, owner, sizes


def test_micle_pick_distinct_and_covering():
    for n in (2, 3, 7):
        seen_i, seen_j = collections.Counter(), collections.Counter()
        for s in range(400):
            i, j = (int(x) for x in micle_pick(tf.constant(n), tf.constant([s, 7], tf.int64)))
            assert i != j and 0 <= i < n and 0 <= j < n
            seen_i[i] += 1
            seen_j[j] += 1
        assert set(seen_i) == set(range(n)) and set(seen_j) == set(range(n))
        # Roughly uniform: each index at least a third of its fair share.
        assert min(seen_i.values()) > 400 / n / 3
    for s in range(20):
        assert [int(x) for x in micle_pick(tf.constant(1), tf.constant([s, 1], tf.int64))] == [0, 0]


def test_micle_pairs_views_come_from_two_images_of_one_case(id_records):
    d, owner, sizes = id_records
    ds = micle_pairs(PipelineConfig(d, batch_size=6, image_size=16, shuffle_buffer=8, seed=3),
                     NO_AUG)
    used = collections.defaultdict(set)
    for batch in ds.take(60):
        for v1, v2 in zip(batch["view1"].numpy(), batch["view2"].numpy()):
            a, b = _decode_id(v1), _decode_id(v2)
            assert owner[a] == owner[b]
            case = owner[a]
            if sizes[case] >= 2:
                assert a != b, f"case {case}: both views from image {a}"
            else:
                assert a == b
            used[case] |= {a, b}
    for case, n in sizes.items():
        assert len(used[case]) == n, f"case {case}: used {sorted(used[case])} of {n} images"


def test_simclr_pairs_views_come_from_one_image_and_cover_all(id_records):
    d, owner, _ = id_records
    ds = simclr_pairs(PipelineConfig(d, batch_size=7, image_size=16, shuffle_buffer=16), NO_AUG)
    seen = set()
    for batch in ds.take(20):
        for v1, v2 in zip(batch["view1"].numpy(), batch["view2"].numpy()):
            assert _decode_id(v1) == _decode_id(v2)
            seen.add(_decode_id(v1))
    assert seen == set(owner)


def test_pipelines_are_reproducible_from_their_seed(tiny_records):
    aug = preset("simclr")

    def first(seed):
        cfg = PipelineConfig(tiny_records, batch_size=4, image_size=16, seed=seed)
        return next(iter(micle_pairs(cfg, aug)))["view1"].numpy()
    a, b, c = first(1), first(1), first(2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_eval_preprocessing_is_the_centre_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)
    # Crop side = round(0.875 * 40) = 35, offsets ((40-35+1)//2, (48-35+1)//2) = (3, 7).
    out = preprocess_eval(tf.constant(png_bytes(img)), 35).numpy()
    np.testing.assert_allclose(out, img[3:38, 7:42] / 255.0, atol=1e-5)


def test_evaluation_pipeline_yields_every_image_once_in_order(id_records):
    d, owner, _ = id_records
    got = []
    for batch in evaluation(PipelineConfig(d, batch_size=4, image_size=16)):
        got += [int(x) for x in batch["image_id"].numpy()]
        assert batch["image"].shape[1:] == (16, 16, 3)
    assert sorted(got) == sorted(owner)


def test_flip_only_augmentation_is_the_image_or_its_mirror():
    rng = np.random.default_rng(1)
    img = tf.constant(rng.random((20, 20, 3)), tf.float32)
    cfg = AugmentConfig(crop=False, flip=True, color_p=0, grayscale_p=0, blur_p=0)
    base = preprocess_eval(tf.constant(png_bytes((img.numpy() * 255).astype(np.uint8))), 20)
    flips = 0
    for s in range(20):
        out = augment(tf.image.convert_image_dtype(tf.io.decode_png(
            png_bytes((img.numpy() * 255).astype(np.uint8))), tf.float32), tf.constant([s, 0]),
            20, cfg).numpy()
        if np.allclose(out, base.numpy(), atol=1e-5):
            continue
        np.testing.assert_allclose(out, base.numpy()[:, ::-1], atol=1e-5)
        flips += 1
    assert 0 < flips < 20


@pytest.mark.parametrize("name", ["simclr", "cxr", "finetune"])
def test_presets_give_valid_images(name):
    img = tf.random.stateless_uniform([50, 60, 3], [1, 2])
    for s in range(5):
        out = augment(img, tf.constant([s, 9]), 32, preset(name)).numpy()
        assert out.shape == (32, 32, 3) and out.min() >= 0.0 and out.max() <= 1.0


def test_grayscale_only_matches_luma_and_zero_strength_jitter_is_identity():
    from tfmicle.data.augment import augment_batch
    x = tf.random.stateless_uniform([6, 8, 8, 3], [3, 4])
    gray = augment_batch(x, tf.constant([1, 1]), AugmentConfig(
        crop=False, flip=False, color_p=0, grayscale_p=1.0, blur_p=0)).numpy()
    luma = x.numpy() @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-5)
    same = augment_batch(x, tf.constant([1, 1]), AugmentConfig(
        crop=False, flip=False, color_p=1.0, color_strength=0.0, grayscale_p=0, blur_p=0))
    np.testing.assert_allclose(same.numpy(), x.numpy(), atol=1e-5)


def test_colour_jitter_changes_colours_but_keeps_structure():
    from tfmicle.data.augment import augment_batch
    x = tf.random.stateless_uniform([16, 8, 8, 3], [5, 6], 0.2, 0.8)
    y = augment_batch(x, tf.constant([2, 2]), AugmentConfig(
        crop=False, flip=False, color_p=1.0, grayscale_p=0, blur_p=0)).numpy()
    changed = np.abs(y - x.numpy()).mean(axis=(1, 2, 3)) > 1e-3
    assert changed.all()
    # Each example's pixels remain strongly correlated with the input (a colour map,
    # not noise).
    for a, b in zip(x.numpy(), y):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.3
