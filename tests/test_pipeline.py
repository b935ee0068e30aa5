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


@pytest.mark.slow
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


@pytest.mark.parametrize("unit,batches", [("image", 20), ("case", 60)])
def test_simclr_pairs_views_come_from_one_image_and_cover_all(id_records, unit, batches):
    d, owner, _ = id_records
    ds = simclr_pairs(PipelineConfig(d, batch_size=7, image_size=16, shuffle_buffer=16), NO_AUG,
                      unit=unit)
    seen = set()
    for batch in ds.take(batches):
        for v1, v2 in zip(batch["view1"].numpy(), batch["view2"].numpy()):
            assert _decode_id(v1) == _decode_id(v2)
            seen.add(_decode_id(v1))
    assert seen == set(owner)


@pytest.mark.slow
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
    from tfmicle.data.augment import augment_view
    x = tf.random.stateless_uniform([8, 8, 3], [3, 4])
    gray = augment_view(x, tf.constant([1, 1]), AugmentConfig(
        crop=False, flip=False, color_p=0, grayscale_p=1.0, blur_p=0)).numpy()
    luma = x.numpy() @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-5)
    same = augment_view(x, tf.constant([1, 1]), AugmentConfig(
        crop=False, flip=False, color_p=1.0, color_strength=0.0, grayscale_p=0, blur_p=0))
    np.testing.assert_allclose(same.numpy(), x.numpy(), atol=1e-5)


def test_view_flip_and_colour_are_drawn_per_view_with_their_probabilities():
    from tfmicle.data.augment import augment_view
    x = tf.random.stateless_uniform([8, 8, 3], [3, 5])
    flips = colours = 0
    n = 200
    for k in range(n):
        y = augment_view(x, tf.constant([k, 1]), AugmentConfig(
            crop=False, flip=True, color_p=0, grayscale_p=0, blur_p=0)).numpy()
        if np.allclose(y, x.numpy()[:, ::-1]):
            flips += 1
        else:
            np.testing.assert_array_equal(y, x.numpy())
        z = augment_view(x, tf.constant([k, 2]), AugmentConfig(
            crop=False, flip=False, color_p=0.8, grayscale_p=0, blur_p=0)).numpy()
        colours += not np.allclose(z, x.numpy())
    # binomial(200, p): 4 standard deviations
    assert abs(flips - 0.5 * n) < 4 * np.sqrt(n * 0.25)
    assert abs(colours - 0.8 * n) < 4 * np.sqrt(n * 0.16)


def test_blur_matches_a_numpy_gaussian_with_reflected_borders():
    from tfmicle.data.augment import gaussian_blur_batch
    x = np.random.default_rng(0).random((3, 20, 17, 3)).astype(np.float32)
    sigmas, r = np.array([0.4, 1.3, 2.0], np.float32), 3
    t = np.arange(-r, r + 1)
    want = []
    for img, sigma in zip(x, sigmas):               # each example its own sigma
        k = np.exp(-t ** 2 / (2 * float(sigma) ** 2))
        k /= k.sum()
        p = np.pad(img, [(r, r), (r, r), (0, 0)], mode="reflect")   # tf's REFLECT too
        rows = sum(k[i] * p[:, i:i + 17] for i in range(2 * r + 1))         # along W
        want.append(sum(k[i] * rows[i:i + 20] for i in range(2 * r + 1)))  # along H
    got = gaussian_blur_batch(tf.constant(x), tf.constant(sigmas), r).numpy()
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5)


def test_colour_jitter_changes_colours_but_keeps_structure():
    from tfmicle.data.augment import augment_view
    x = tf.random.stateless_uniform([16, 8, 8, 3], [5, 6], 0.2, 0.8)
    y = np.stack([augment_view(x[i], tf.constant([2, i]), AugmentConfig(
        crop=False, flip=False, color_p=1.0, grayscale_p=0, blur_p=0)).numpy()
        for i in range(16)])
    changed = np.abs(y - x.numpy()).mean(axis=(1, 2, 3)) > 1e-3
    assert changed.all()
    # Each example's pixels remain strongly correlated with the input (a colour map,
    # not noise).
    for a, b in zip(x.numpy(), y):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.3


# --------------------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def many_cases(tmp_path_factory):
    """20 cases of 1-4 images (54 images), every image a unique colour id."""
    d = str(tmp_path_factory.mktemp("manycases"))
    cases, k = [], 0
    for c in range(20):
        n = 1 + c % 4
        ids = list(range(k, k + n))
        k += n
        cases.append({"case_id": f"c{c:02d}", "images": [_id_image(i) for i in ids],
                      "image_ids": [str(i) for i in ids], "label_class": -1})
    write_records(d, "train", cases, ["x"], num_shards=3)
    owner = {i: c["case_id"] for c in cases for i in map(int, c["image_ids"])}
    return d, owner


def _batch_cases(batch, owner):
    return [owner[_decode_id(v)] for v in batch["view1"].numpy()]


def _pairs(cases):
    counts = collections.Counter(cases)
    return sum(n * (n - 1) // 2 for n in counts.values())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["micle", "simclr"])
def test_pair_batches_never_hold_two_examples_of_one_case(many_cases, method):
    from tfmicle.data.pipeline import pretrain_dataset
    d, owner = many_cases
    ds = pretrain_dataset(method, PipelineConfig(d, batch_size=6, image_size=8, seed=4),
                          NO_AUG)
    for batch in ds.take(40):          # 40 batches = 13 epochs of 3 batches: boundaries too
        cases = _batch_cases(batch, owner)
        assert _pairs(cases) == 0, cases
        # The pipeline's own count (logged as same_case_pairs) agrees.
        assert batch["same_case"].numpy().sum() == 0


def test_image_level_simclr_does_have_same_case_pairs(many_cases):
    """The switch to plain image-level SimCLR: images of one case may share a batch,
    and same_case counts them exactly (so the zero above is not vacuous)."""
    d, owner = many_cases
    ds = simclr_pairs(PipelineConfig(d, batch_size=6, image_size=8, seed=4), NO_AUG,
                      unit="image")
    total = 0
    for batch in ds.take(40):
        cases = _batch_cases(batch, owner)
        assert batch["same_case"].numpy().sum() / 2 == _pairs(cases)
        total += _pairs(cases)
    assert total > 0


@pytest.mark.slow
def test_micle_epochs_are_fresh_seeded_permutations(many_cases):
    d, owner = many_cases

    def epochs(seed, n):
        ds = micle_pairs(PipelineConfig(d, batch_size=6, image_size=8, seed=seed), NO_AUG)
        flat = [c for b in ds.take(3 * n) for c in _batch_cases(b, owner)]
        return [flat[18 * e:18 * (e + 1)] for e in range(n)]   # 20 cases -> 18 per epoch
    a = epochs(0, 6)
    for ep in a:
        assert len(set(ep)) == 18            # each case at most once per epoch
    assert len({tuple(ep) for ep in a}) == 6  # a fresh order every epoch
    # The two left-out cases change from epoch to epoch, so every case gets its turn.
    assert set().union(*map(set, a)) == set(owner.values())
    assert a == epochs(0, 6)                  # seeded: the same seed, the same stream
    assert a != epochs(1, 6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["micle", "simclr"])
def test_resumed_stream_continues_where_it_stopped(tiny_records, method):
    """Batches from start_step k equal batches k, k+1, ... of the uninterrupted stream,
    augmentation included (a resumed run neither replays nor skips data)."""
    from tfmicle.data.pipeline import pretrain_dataset
    cfg = PipelineConfig(tiny_records, batch_size=4, image_size=16, seed=2)
    aug = preset("simclr")
    full = [b["view2"].numpy() for b in pretrain_dataset(method, cfg, aug).take(9)]
    resumed = [b["view2"].numpy()
               for b in pretrain_dataset(method, cfg, aug, start_step=5).take(4)]
    for x, y in zip(full[5:], resumed):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(full[4], resumed[0])


# --------------------------------------------------------------------------- jitter

def _reference_jitter(img, factors, order):
    """SimCLR's color_jitter_rand for one image with given parameters: ops in the given
    order, clip to [0, 1] after each. Brightness and contrast in numpy from their
    formulas, saturation and hue through an HSV round trip (tf.image's conversions)."""
    x = np.asarray(img, np.float64)
    for op in order:
        f = float(factors[op])
        if op == 0:
            x = x * f                                   # SimCLRv2 random_brightness
        elif op == 1:
            m = x.mean(axis=(0, 1), keepdims=True)      # per-channel mean
            x = (x - m) * f + m
        else:
            h, s, v = np.moveaxis(tf.image.rgb_to_hsv(x.astype(np.float32)).numpy(), -1, 0)
            if op == 2:
                s = np.clip(s * f, 0.0, 1.0)
            else:
                h = np.mod(h + f, 1.0)
            x = tf.image.hsv_to_rgb(np.stack([h, s, v], -1).astype(np.float32)).numpy()
        x = np.clip(x, 0.0, 1.0)
    return x


@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_each_jitter_op_matches_tf_image(op):
    from tfmicle.data.augment import color_jitter
    rng = np.random.default_rng(op)
    x = rng.random((5, 9, 7, 3)).astype(np.float32)
    factors = np.stack([rng.uniform(0.2, 1.8, 5), rng.uniform(0.2, 1.8, 5),
                        rng.uniform(0.2, 1.8, 5), rng.uniform(-0.2, 0.2, 5)], 1)
    # Only `op` active: the other three are identities (factor 1, hue shift 0).
    ident = np.array([1.0, 1.0, 1.0, 0.0])
    f = np.where(np.arange(4) == op, factors, ident).astype(np.float32)
    order = np.array([[op] + [o for o in range(4) if o != op]] * 5, np.int32)
    got = np.stack([color_jitter(tf.constant(x[i]), tf.constant(f[i]),
                                 tf.constant(order[i])).numpy() for i in range(5)])
    want = np.stack([_reference_jitter(x[i], f[i], order[i]) for i in range(5)])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_colour_jitter_in_random_order_matches_simclr_reference():
    from tfmicle.data.augment import color_jitter, sample_jitter
    x = tf.random.stateless_uniform([16, 8, 8, 3], [7, 8])
    factors, order = sample_jitter(tf.constant([3, 4], tf.int64), 16, 1.0)
    f, o = factors.numpy(), order.numpy()
    # SimCLR's ranges for strength 1.
    assert (f[:, 0] >= 0.2 - 1e-6).all() and (f[:, 0] <= 1.8).all()
    assert (np.abs(f[:, 3]) <= 0.2).all()
    assert all(sorted(r) == [0, 1, 2, 3] for r in o) and len({tuple(r) for r in o}) > 4
    got = np.stack([color_jitter(x[i], factors[i], order[i]).numpy() for i in range(16)])
    want = np.stack([_reference_jitter(x.numpy()[i], f[i], o[i]) for i in range(16)])
    np.testing.assert_allclose(got, want, atol=5e-5)
