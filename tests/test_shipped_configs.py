"""Every shipped training config runs on the records that the README's matching data_prep
command writes: the split names agree (data_prep names its validation split
`validation`; only `--format chexpert` keeps CheXpert's own `valid.csv` as `valid`).

Each config runs two steps, shrunk to a tiny model with --set; everything that names a
split or the data comes from the config file as shipped.
"""
from __future__ import annotations

import os

import pytest

from test_data_prep import make_chexpert, make_ham10000, run
from tfmicle.train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHRINK = ["model.depth=18", "model.width_multiplier=0.25", "data.image_size=32",
          "train.batch_size=4", "train.train_steps=2", "train.checkpoint_steps=2",
          "train.log_steps=1", "data.shuffle_buffer=16"]
FINETUNE_SHRINK = ["finetune.init=scratch", "finetune.eval_every_steps=2"]


@pytest.fixture(scope="module")
def readme_records(tmp_path_factory) -> dict[str, str]:
    """The README's data_prep commands: `--format ham10000` with the default split
    fractions, `--format chexpert --split-fractions train=0.95,validation=0.05`."""
    root = tmp_path_factory.mktemp("readme_records")
    make_ham10000(root / "ham", broken=False, lesions=60)
    run("ham10000", root / "ham", root / "ham10000")
    base, _ = make_chexpert(root)
    run("chexpert", base, root / "chexpert",
        split_fractions={"train": 0.95, "validation": 0.05})
    return {"ham10000": str(root / "ham10000"), "chexpert": str(root / "chexpert")}


@pytest.mark.slow
@pytest.mark.parametrize("config,records,extra", [
    ("tiny", "ham10000", []),
    ("finetune_tiny", "ham10000", FINETUNE_SHRINK),
    ("finetune_derm", "ham10000", FINETUNE_SHRINK),
    ("finetune_chexpert", "chexpert", FINETUNE_SHRINK),
])
def test_shipped_config_runs_on_data_prep_records(config, records, extra, readme_records,
                                                  tmp_path, capsys):
    model_dir = tmp_path / config
    rc = train_main(["-q", "--config", os.path.join(ROOT, "configs", config + ".yaml"),
                     "--model-dir", str(model_dir),
                     "--set", f"data.dir={readme_records[records]}",
                     *[a for kv in SHRINK + extra for a in ("--set", kv)]])
    assert rc == 0, capsys.readouterr().err
    assert "done: steps 0 -> 2 of 2" in capsys.readouterr().out
    if config.startswith("finetune"):
        assert (model_dir / "validation.jsonl").read_text().strip()
