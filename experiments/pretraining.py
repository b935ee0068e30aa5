"""Experiment 1's pretraining run, shared by its PH2 and HAM10000 versions and by the
settings search (micle_vs_simclr.py, ham_micle.py, choose_derm_settings.py): one
definition, so every study pretrains the two methods identically."""
from __future__ import annotations

import argparse
import os
import shutil
import time

from experiments import common

PRETRAIN_SPLIT = "train"

# The pretraining settings both methods share. The augmentation (the "derm" preset: no
# colour jitter, no grayscale) and the learning rate were chosen on validation lesions
# carved from the pretraining lesions (experiments/choose_derm_settings.py; its
# results.md has the search); every other value was fixed beforehand (SimCLR's CIFAR-10
# recipe for 32 px images: no blur, temperature 0.2, square-root LR scaling).
AUGMENT = {"augment": "derm"}
LEARNING_RATE = 0.0375       # LARS base LR, square-root batch scaling


def pretrain_config(method: str, a: argparse.Namespace, data_dir: str, model_dir: str,
                    seed: int, warmup_steps: int, num_examples: int):
    """The pretraining Config: identical for both methods except `method` (and the
    warmup expressed in epochs of each method's examples, so both warm up for the same
    number of steps). a.overrides (--set) win over these settings."""
    extra = {
        "mode": "pretrain", "method": method, "model_dir": model_dir,
        "data": {"dir": data_dir, "train_split": PRETRAIN_SPLIT, "image_size": a.image_size,
                 **AUGMENT, "shuffle_buffer": 4096, "cache": True},
        "model": {"depth": a.depth, "width_multiplier": a.width, "num_proj_layers": 2,
                  "proj_out_dim": 64, "global_bn": False, "online_probe": False},
        "train": {"batch_size": a.batch_size, "train_steps": a.steps,
                  "warmup_epochs": warmup_steps * a.batch_size / max(num_examples, 1),
                  "optimizer": "lars", "learning_rate": LEARNING_RATE, "lr_scaling": "sqrt",
                  "weight_decay": 1e-6, "temperature": 0.2, "seed": seed,
                  "checkpoint_steps": a.steps, "keep_checkpoints": 1,
                  "log_steps": max(min(100, a.steps // 4), 1)},
    }
    return common.make_config(extra, a.overrides)


def run_pretraining(method: str, a, data_dir: str, model_dir: str, seed: int) -> dict:
    from tfmicle.data.pipeline import count_examples, pretrain_examples
    from tfmicle.train.pretrain import pretrain

    cfg = pretrain_config(method, a, data_dir, model_dir, seed, 0, 1)
    per = pretrain_examples(method, cfg.data.simclr_unit)
    n = count_examples(data_dir, PRETRAIN_SPLIT, per)
    cfg = pretrain_config(method, a, data_dir, model_dir, seed,
                          int(round(0.1 * a.steps)), n)
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)       # a fresh run: never resume an older config
    t = time.time()
    res = pretrain(cfg, verbose=a.verbose)
    return {"cfg": cfg, "seconds": time.time() - t, "steps": res["end_step"],
            "examples_per_epoch": n, "example": per,
            "final_loss": res["final_metrics"].get("loss"),
            "same_case_pairs": res["final_metrics"].get("same_case_pairs"),
            "checkpoint": res["checkpoint"]}
