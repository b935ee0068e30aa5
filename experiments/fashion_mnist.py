"""Experiment 2's data: Fashion-MNIST from the official IDX files, the validation split
and the labeled pool carved from the training images, PNGs, CSV manifests and the
data_prep conversion (``data_prep.convert``, the code behind ``python -m data_prep``)."""
from __future__ import annotations

import csv
import gzip
import os

import numpy as np

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not) -> numpy array (uint8 images [N, H, W] or labels [N])."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
             0x0E: ">f8"}.get(data[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown IDX type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def load_fashion_mnist(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images [60000, 28, 28], labels), "test": (images [10000, 28, 28], labels)}."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        paths = [os.path.join(folder, f"{prefix}-{kind}-ubyte.gz")
                 for kind in ("images-idx3", "labels-idx1")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise SystemExit(f"error: {missing[0]} not found: install Debian's "
                             "dataset-fashion-mnist (apt-get install dataset-fashion-mnist; "
                             "setup.sh does) or pass --fashion-dir")
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if len(images) != len(labels):
            raise SystemExit(f"error: {paths[0]}: {len(images)} images, {len(labels)} labels")
        out[split] = (images, labels.astype(np.int64))
    return out


def stratified_head(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified subsample of size ~n (all when n <= 0)."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = max(n // len(classes), 1)
    idx = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]
    return np.sort(np.concatenate(idx))


def carve_validation(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """bool [N]: a seeded, class-stratified validation split of ~size training images."""
    val = np.zeros(len(labels), bool)
    val[stratified_head(labels, size, seed + 1000)] = True
    return val


def carve_pool(labels: np.ndarray, pool_size: int, validation_size: int,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(is_validation, is_pool), bool [N] each, over the training images: the validation
    split (``carve_validation``, so it does not depend on the pool size), then the labeled
    pool: a seeded, class-stratified sample of ~pool_size of the other images (all of
    them when pool_size <= 0). Disjoint; pools of one seed are nested across sizes."""
    is_val = carve_validation(labels, validation_size, seed)
    rest = np.flatnonzero(~is_val)
    is_pool = np.zeros(len(labels), bool)
    is_pool[rest[stratified_head(labels[rest], pool_size, seed)]] = True
    return is_val, is_pool


def write_images(root: str, data: dict, train_idx: np.ndarray, test_idx: np.ndarray) -> dict:
    """PNG per image under root/{train,test}/; returns {"train": [rel paths], "test": [...]}."""
    from PIL import Image

    rels = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images = data[split][0]
        rels[split] = []
        for i in idx:
            rel = f"{split}/{int(i):05d}.png"
            Image.fromarray(images[i], mode="L").save(os.path.join(root, rel), compress_level=1)
            rels[split].append(rel)
    return rels


def write_manifests(root: str, data: dict, rels: dict, train_idx, test_idx,
                    is_val: np.ndarray, is_pool: np.ndarray) -> tuple[str, str]:
    """labeled.csv (image, label, split: the pool as train, validation, test) and
    unlabeled.csv (image: every training image, pool and validation included, no label)
    in root. Training images in neither the pool nor validation have no labeled row."""
    if np.any(is_val & is_pool):
        raise ValueError("the labeled pool and the validation split overlap")
    labeled = os.path.join(root, "labeled.csv")
    with open(labeled, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "split"])
        for rel, i, v, p in zip(rels["train"], train_idx, is_val, is_pool):
            if v or p:
                w.writerow([rel, CLASS_NAMES[data["train"][1][i]],
                            "validation" if v else "train"])
        for rel, i in zip(rels["test"], test_idx):
            w.writerow([rel, CLASS_NAMES[data["test"][1][i]], "test"])
    unlabeled = os.path.join(root, "unlabeled.csv")
    with open(unlabeled, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image"])
        for rel in rels["train"]:
            w.writerow([rel])
    return labeled, unlabeled


def prepare_records(manifest: str, out: str, fractions, seed: int, workers: int,
                    labeled: bool) -> dict:
    from data_prep.convert import ConvertConfig, convert
    from data_prep.formats import FormatOptions

    cfg = ConvertConfig(
        format="csv", input=manifest, out=out,
        format_options=FormatOptions(class_names=CLASS_NAMES if labeled else None),
        split_fractions={"train": 1.0}, split_seed=seed, label_fractions=list(fractions),
        subset_splits=("train",) if labeled else (), overwrite=True, workers=workers,
        strict=True)
    return convert(cfg)
