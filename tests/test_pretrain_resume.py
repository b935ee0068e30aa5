"""A resumed pretraining run is the uninterrupted run: the data stream continues where
the checkpoint left it (no replayed batches), so the weights come out the same."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import synthetic_cases, write_records
from tfmicle.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def _weights(model_dir: str, cfg) -> list[np.ndarray]:
    from tfmicle.rundir import load_encoder
    return [w.numpy() for w in load_encoder(cfg, model_dir).weights]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["micle", "simclr"])
def test_resumed_run_equals_the_uninterrupted_run(tmp_path, method):
    from tfmicle.train.pretrain import pretrain
    data = write_records(str(tmp_path / "rec"), "train",
                         synthetic_cases(20, lambda c: 1 + c % 3, size=32), ["a", "b", "c"])
    over = [f"data.dir={data}", f"method={method}", "train.train_steps=6",
            "train.checkpoint_steps=3", "train.keep_checkpoints=5", "train.log_steps=3", "model.online_probe=false",
            "train.batch_size=8", "train.optimizer=momentum", "train.learning_rate=0.5"]
    straight = load_config(TINY, over + [f"model_dir={tmp_path / 'a'}"])
    assert pretrain(straight, verbose=0)["end_step"] == 6
    # The same run killed after its step-3 checkpoint: a copy of it without ckpt-6.
    ck_b = tmp_path / "b" / "checkpoints"
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for f in ck_b.glob("ckpt-6*"):
        f.unlink()
    (ck_b / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n'
                                     'all_model_checkpoint_paths: "ckpt-3"\n')
    assert tf.train.latest_checkpoint(str(ck_b)).endswith("ckpt-3")
    resumed = load_config(TINY, over + [f"model_dir={tmp_path / 'b'}"])
    res = pretrain(resumed, verbose=0)
    assert (res["start_step"], res["end_step"]) == (3, 6)
    a, b = _weights(str(tmp_path / "a"), straight), _weights(str(tmp_path / "b"), resumed)
    moved = max(float(np.abs(x).max()) for x in a)
    assert moved > 0
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)
