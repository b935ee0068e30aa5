"""Small training runs shared by the fine-tuning, export and score tests: the recipes.
conftest.py makes each one once per session as a fixture (mc_records, ml_records,
pretrained_run, finetuned_run, finetuned_ml_run, exported_model, exported_ml_model)."""
from __future__ import annotations

import math
import os

import keras
import numpy as np

from conftest import png_bytes, synthetic_cases, write_records
from tfmicle.config import load_config
from tfmicle.data import records

CLASSES = ["a", "b", "c"]
ML_CLASSES = ["Atelectasis", "Edema", "Effusion"]
def multiclass_records(root) -> str:
    """train: 24 cases of 1-3 images; validation: 6 cases of 2; test: 9 cases of 1-2; a
    50 % label subset of train."""
    d = os.path.join(str(root), "records_mc")
    write_records(d, "train", synthetic_cases(24, lambda c: 1 + c % 3), CLASSES)
    write_records(d, "validation", synthetic_cases(6, 2, seed=1), CLASSES)
    write_records(d, "test", synthetic_cases(9, lambda c: 1 + c % 2, seed=2), CLASSES)
    path = records.subset_path(d, "train", 0.5)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"case{c:04d}\n" for c in range(0, 24, 2)))
    return d


def multilabel_cases(n: int, seed: int, size: int = 36) -> list[dict]:
    """Cases with multi-label targets mixing 1, 0, -1 (uncertain) and NaN; the first
    class is visible as a red tint. One case in 8 is unlabeled (no targets)."""
    rng = np.random.default_rng(seed)
    cases = []
    for c in range(n):
        y = rng.choice([1.0, 0.0, -1.0, math.nan], 3, p=[0.4, 0.35, 0.15, 0.1]).tolist()
        y[0] = float(c % 2)
        imgs = []
        for _ in range(1 + c % 2):
            a = rng.integers(0, 200, (size, size, 3)).astype(np.float32)
            if y[0] == 1:
                a[..., 0] = 0.5 * a[..., 0] + 120
            imgs.append(png_bytes(a.astype(np.uint8)))
        cases.append({"case_id": f"m{c:04d}", "images": imgs,
                      "image_ids": [f"m{c:04d}/{i}.png" for i in range(len(imgs))],
                      "label_multi": None if c % 8 == 7 else y})
    return cases


def multilabel_records(root) -> str:
    d = os.path.join(str(root), "records_ml")
    write_records(d, "train", multilabel_cases(24, 0), ML_CLASSES, task="multilabel")
    write_records(d, "validation", multilabel_cases(10, 1), ML_CLASSES, task="multilabel")
    write_records(d, "test", multilabel_cases(12, 2), ML_CLASSES, task="multilabel")
    path = records.subset_path(d, "train", 0.5)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"m{c:04d}\n" for c in range(12)))
    return d


TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")
FT_TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "finetune_tiny.yaml")


def pretrained(root, d: str) -> str:
    """A 2-step MICLe pretraining run (the foundation's pretrain()) on the multiclass
    records; returns its model dir."""
    from tfmicle.train.pretrain import pretrain
    model_dir = os.path.join(str(root), "pretrain")
    cfg = load_config(TINY, [f"data.dir={d}", f"model_dir={model_dir}", "train.batch_size=8",
                             "train.train_steps=2", "train.checkpoint_steps=2",
                             "train.log_steps=2", "model.global_bn=false"])
    pretrain(cfg, verbose=0)
    return model_dir


class Snapshot(keras.callbacks.Callback):
    """Encoder weights (all variables, by path) when training starts."""

    def __init__(self):
        super().__init__()
        self.weights = None

    def on_train_begin(self, logs=None):
        self.weights = {v.path: np.array(v.numpy()) for v in self.model.encoder.weights}


def finetune_cfg(root, name: str, overrides: list[str], data_dir: str):
    model_dir = os.path.join(str(root), name)
    return load_config(FT_TINY, [f"data.dir={data_dir}", f"model_dir={model_dir}"] + overrides)


def finetuned(root, pre: str, data: str) -> dict:
    """Full fine-tuning (fine_tune_after_block -1) from the pretraining checkpoint, 4 steps,
    validation every 2: {"result", "snapshot", "model_dir", "pretrain_dir", "data"}."""
    from tfmicle.train.finetune import finetune
    cfg = finetune_cfg(root, "ft_full", [
        "finetune.init=checkpoint", f"finetune.checkpoint={pre}",
        "train.train_steps=4", "finetune.eval_every_steps=2", "train.checkpoint_steps=2",
        "train.log_steps=2", "finetune.best_metric=val_auc"], data)
    snap = Snapshot()
    result = finetune(cfg, callbacks=[snap], verbose=0)
    return {"result": result, "snapshot": snap.weights, "model_dir": cfg.model_dir,
            "pretrain_dir": pre, "data": data}


def finetuned_multilabel(root, data: str) -> dict:
    """Multi-label fine-tuning from scratch on the 50 % subset with U-Ones; lr 0 so the
    validation metric never improves and early stopping (patience 1) stops at step 4."""
    from tfmicle.train.finetune import finetune
    cfg = finetune_cfg(root, "ft_ml", [
        "finetune.init=scratch", "data.label_fraction=0.5", "train.train_steps=10",
        "finetune.eval_every_steps=2", "train.checkpoint_steps=2", "train.log_steps=2",
        "train.learning_rate=0.0", "finetune.uncertainty_policy=ones",
        "finetune.best_metric=val_auc", "finetune.early_stopping_patience=1",
        "finetune.auc_classes=Atelectasis,Edema", "finetune.zero_init_head=false"], data)
    result = finetune(cfg, verbose=0)
    return {"result": result, "model_dir": cfg.model_dir, "data": data, "cfg": cfg}


def exported(root, run: dict) -> dict:
    """The multiclass fine-tuned run exported to <root>/models/tiny/1."""
    from tfmicle.export import export
    out = export(run["model_dir"], os.path.join(str(root), "models", "tiny"))
    return {**out, "run": run}


def exported_multilabel(root, run: dict) -> dict:
    from tfmicle.export import export
    out = export(run["model_dir"], os.path.join(str(root), "models", "cxr"))
    return {**out, "run": run}
