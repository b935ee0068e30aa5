"""Importing SimCLR's TF1 checkpoints, against the official code's variable lists and
outputs (../shared/fixtures/simclrv2_tf1, see its README.txt), and continued
pretraining from an import."""
from __future__ import annotations

import functools
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import shared_path

shared_path("fixtures", "simclrv2_tf1", module=True)

import _simclr_tf1 as fx  # noqa: E402
from tfmicle.config import Config, load_config
from tfmicle.models import simclr_tf1
from tfmicle.models.heads import projection_head, supervised_head
from tfmicle.models.resnet import ResNetSpec, build_resnet_in_order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WIDTH = 0.0625  # R50 at 1/16 width: stem of 4 channels, 2048/16 = 128 features


def _build_json(model: str) -> dict:
    with open(os.path.join(fx.FIXTURE, f"build_{model}.json")) as f:
        return json.load(f)


# --------------------------------------------------------------------------- the four lists

@pytest.mark.slow
@pytest.mark.parametrize("model,depth,width,sk", [
    ("r50_1x_sk0", 50, 1, False), ("r50_1x_sk1", 50, 1, True),
    ("r101_1x_sk0", 101, 1, False),
    pytest.param("r50_2x_sk1", 50, 2, True, marks=pytest.mark.slow)])  # 178 M parameters
def test_every_variable_of_the_official_lists_maps_once_with_its_shape(model, depth, width, sk):
    lines = fx.variables(model)
    shapes = {name: shape for name, shape, _, _ in lines}
    variables = simclr_tf1.model_variables(shapes)
    # Slots and the step are skipped, every model line is kept (the fixture's kinds).
    assert set(variables) == {n for n, _, _, kind in lines if kind == "model"}
    assert len(variables) == _build_json(model)["counts"]["model"]
    arch = simclr_tf1.infer_architecture(variables)
    assert (arch.depth, arch.width_multiplier, arch.sk_ratio > 0) == (depth, width, sk)
    assert (arch.num_proj_layers, arch.proj_out_dim, arch.num_classes) == (3, 128, 1000)
    spec = ResNetSpec(depth=depth, width_multiplier=width, sk_ratio=arch.sk_ratio,
                      global_bn=False)
    encoder, convs, bns = build_resnet_in_order(spec)
    feats = encoder.output_shape[-1]
    proj = projection_head(feats, 3, 128, global_bn=False)
    head = supervised_head(1000)
    head.build((None, feats))
    mapping = simclr_tf1.variable_map(encoder, convs, bns, proj, 3, head)
    simclr_tf1.check_coverage(mapping, variables)  # names both ways, then every shape
    assert len(mapping) == len(variables)
    assert len({id(v) for v in mapping.values()}) == len(mapping)  # each of ours once
    ours = ([v for v in encoder.weights] + [v for v in proj.weights] + [v for v in head.weights])
    assert {id(v) for v in ours} == {id(v) for v in mapping.values()}  # all of ours filled
    # The encoder's trainable parameters are the checkpoint's base_model/ trainables.
    want = sum(int(np.prod(s)) for n, s, _, kind in lines if kind == "model"
               and n.startswith("base_model/") and not n.endswith(("moving_mean",
                                                                   "moving_variance")))
    got = sum(int(np.prod(v.shape)) for v in encoder.trainable_variables)
    assert got == want
    if model == "r50_1x_sk1":  # the published SK ResNet-50 (1x): 35.2M parameters
        assert got == 35_215_584 and round(got / 1e6, 1) == 35.2


def test_unknown_layouts_are_refused():
    shapes = {n: s for n, s, _, _ in fx.variables("r50_1x_sk0")}
    cut = {n: s for n, s in shapes.items() if "conv2d_52/" not in n}
    with pytest.raises(simclr_tf1.CheckpointMismatch, match="fit no SimCLR ResNet"):
        simclr_tf1.infer_architecture(simclr_tf1.model_variables(cut))
    with pytest.raises(simclr_tf1.CheckpointMismatch, match="pass --ema"):
        simclr_tf1.infer_architecture(simclr_tf1.model_variables(
            {"ema_model/" + n: s for n, s in shapes.items()}))


# --------------------------------------------------------------------------- the official outputs

# reference output -> the layer of ours whose output it is (spatial means for 4-D ones)
ENCODER_OUTPUTS = {"initial_conv_spatial_mean": "stem_conv", "initial_max_pool_spatial_mean":
                   "stem_pool", "block_group1_spatial_mean": "block_group1_block2_out",
                   "block_group2_spatial_mean": "block_group2_block3_out",
                   "block_group3_spatial_mean": "block_group3_block5_out",
                   "block_group4_spatial_mean": "block_group4_block2_out",
                   "final_avg_pool": "features"}
HEAD_OUTPUTS = {"proj_0_prerelu": "head_projection_batch_normalization0",
                "proj_0": "head_projection_relu0",
                "proj_1_prerelu": "head_projection_batch_normalization1",
                "proj_1": "head_projection_relu1", "proj_2": "projection"}


def reference_outputs(model) -> dict[str, np.ndarray]:
    """The fixture's outputs, computed by a ContrastiveModel (inference mode)."""
    enc, proj = model.encoder, model.projection
    taps = keras.Model(enc.input, [enc.get_layer(n).output for n in ENCODER_OUTPUTS.values()])
    got = {}
    for key, out in zip(ENCODER_OUTPUTS, taps(fx.inputs(), training=False)):
        out = np.asarray(out, np.float64)
        got[key] = out.mean(axis=(1, 2)) if out.ndim == 4 else out
    feats = got["final_avg_pool"].astype(np.float32)
    head = keras.Model(proj.input, [proj.get_layer(n).output for n in HEAD_OUTPUTS.values()])
    for key, out in zip(HEAD_OUTPUTS, head(feats, training=False)):
        got[key] = np.asarray(out)
    got["logits_sup"] = np.asarray(model.probe(feats))
    return got


@pytest.mark.slow
def test_imported_r50_1x_reproduces_the_official_outputs(simclr_r50_checkpoint, tmp_path, capsys):
    """Import through the CLI, read the run folder back as any tfmicle run, and run the
    fixture images: every output of the TF1 code within 1e-4 x its largest magnitude."""
    from tfmicle import build
    run = str(tmp_path / "run")
    rc, err = _import(["--simclr-tf1", simclr_r50_checkpoint, "--out", run], capsys)
    assert rc == 0, err
    cfg = load_config(os.path.join(run, "config.yaml"))
    cfg.model.global_bn = False
    model = build.contrastive_model(cfg, 1000)
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))
    ).assert_existing_objects_matched()
    got, ref = reference_outputs(model), fx.outputs()
    assert set(ref) == set(got)
    for key, want in ref.items():
        err = np.abs(got[key] - want).max() / np.abs(want).max()
        assert err < 1e-4, (key, err)
    assert list(np.argmax(got["logits_sup"], -1)) == [552, 552, 487, 552]  # README.txt


# --------------------------------------------------------------------------- tiny stand-ins

@functools.lru_cache(maxsize=None)
def _tiny_state(sk: bool) -> dict:
    model, spec = _tiny_model(sk)
    return fx.tf1_state(model, spec, 3)


def _tiny_model(sk: bool, num_classes: int = 10, seed: int = 0):
    """A tiny ContrastiveModel with random weights (incl. BN statistics) and its spec."""
    from tfmicle import build
    cfg = Config()
    cfg.model.depth, cfg.model.width_multiplier = 50, TINY_WIDTH
    cfg.model.sk_ratio = simclr_tf1.SK_RATIO if sk else 0.0
    cfg.model.num_proj_layers, cfg.model.proj_out_dim = 3, 16
    cfg.data.image_size = 64
    keras.utils.set_random_seed(seed)
    model = build.contrastive_model(cfg, num_classes)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    return model, build.resnet_spec(cfg, global_bn=False)


def _tiny_checkpoint(path, sk: bool = False, ema: bool = False, edit=None) -> tuple[str, dict]:
    """A TF1-format checkpoint of a tiny model; returns (prefix, {TF1 name: value})."""
    state = _tiny_state(sk)
    tensors = fx.with_training_state(state)
    if ema:  # the raw copy gets other values, so the test sees which copy was read
        tensors.update({"ema_model/" + n: v for n, v in state.items()})
        tensors.update({n: v + 1.0 for n, v in state.items()})
    if edit:
        edit(tensors)
    return fx.save_v2(os.path.join(str(path), "model.ckpt-250228"), tensors), state


def _import(argv, capsys) -> tuple[int, str]:
    from tfmicle.import_checkpoint import main
    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


def _run_state(run_dir: str) -> dict[str, np.ndarray]:
    """The imported run folder read back the standard way, under TF1 names."""
    from tfmicle import build
    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    info = json.load(open(os.path.join(run_dir, "import.json")))
    model = build.contrastive_model(cfg, info["architecture"]["linear_head_classes"])
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    ).assert_existing_objects_matched()
    return fx.tf1_state(model, build.resnet_spec(cfg, global_bn=False),
                        cfg.model.num_proj_layers)


@pytest.mark.slow
@pytest.mark.parametrize("sk,ema", [(False, False), (True, True)])
def test_import_writes_a_run_with_exactly_the_checkpoint_values(tmp_path, capsys, sk, ema):
    prefix, state = _tiny_checkpoint(tmp_path / "src", sk=sk, ema=ema)
    out = str(tmp_path / "run")
    rc, err = _import(["--simclr-tf1", prefix, "--out", out] + (["--ema"] if ema else []),
                      capsys)
    assert rc == 0, err
    got = _run_state(out)
    assert set(got) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    info = json.load(open(os.path.join(out, "import.json")))
    assert info["global_step"] == fx.STEP and info["ema"] == ema
    assert info["architecture"]["sk_ratio"] == (simclr_tf1.SK_RATIO if sk else 0.0)
    assert os.path.basename(info["checkpoint"]) == f"ckpt-{fx.STEP}"
    # A folder as --simclr-tf1: its one checkpoint, even when its "checkpoint" file names
    # the place it was trained; two checkpoints are ambiguous.
    (tmp_path / "src" / "checkpoint").write_text(
        'model_checkpoint_path: "gs://bucket/r50/model.ckpt-250228"\n')
    rc, err = _import(["--simclr-tf1", str(tmp_path / "src"), "--out", out + "2"], capsys)
    assert rc == 0, err
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(prefix + suffix, str(tmp_path / "src" / "model.ckpt-1") + suffix)
    rc, err = _import(["--simclr-tf1", str(tmp_path / "src"), "--out", out + "3"], capsys)
    assert rc == 2 and "several checkpoints in" in err and "\n" not in err


@pytest.mark.slow
def test_import_into_a_ram_run_folder(tmp_path, capsys, monkeypatch):
    """--out on an object store (ram://): the run folder lands there whole (copied back
    to disk file by file, it reads back with the checkpoint's values), nothing is
    written locally, and a second import into it is refused."""
    import uuid

    from tfmicle import fileio
    prefix, state = _tiny_checkpoint(tmp_path / "src")
    monkeypatch.chdir(tmp_path)   # a URL taken for a local path would appear here
    out = f"ram://imp{uuid.uuid4().hex[:8]}/run"
    try:
        rc, err = _import(["--simclr-tf1", prefix, "--out", out], capsys)
        assert rc == 0, err
        assert sorted(os.listdir(tmp_path)) == ["src"]
        local = tmp_path / "copy"
        for d, _dirs, names in fileio.walk(out):
            for n in names:
                dst = local / fileio.relpath(fileio.join(d, n), out)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(fileio.read_bytes(fileio.join(d, n)))
        got = _run_state(str(local))
        assert set(got) == set(state)
        for name, value in state.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        rc, err = _import(["--simclr-tf1", prefix, "--out", out], capsys)
        assert rc == 2 and "already holds a run" in err
    finally:
        fileio.rmtree(out.rsplit("/", 1)[0], ignore_errors=True)


def _drop(name):
    return lambda t: t.pop(name)


@pytest.mark.slow
@pytest.mark.parametrize("edit,argv,message", [
    (lambda t: t.update({"base_model/extra_dense/kernel": np.zeros([2, 2], np.float32)}),
     [], "1 left over in the checkpoint: base_model/extra_dense/kernel"),
    (_drop("base_model/batch_normalization_7/moving_variance"), [],
     "1 missing from the checkpoint: base_model/batch_normalization_7/moving_variance"),
    (lambda t: t.update({"head_contrastive/nl_1/dense/kernel": np.zeros([128, 64], np.float32)}),
     [], "1 shape(s) differ: head_contrastive/nl_1/dense/kernel [128, 64] vs ours [128, 128]"),
    (None, ["--sk", "1"], "missing from the checkpoint"),
    (None, ["--ema"], "has no ema_model/ model variables"),
])
def test_mismatches_exit_2_naming_the_variables(tmp_path, capsys, edit, argv, message):
    prefix, _ = _tiny_checkpoint(tmp_path / "src", edit=edit)
    out = tmp_path / "run"
    rc, err = _import(["--simclr-tf1", prefix, "--out", str(out)] + argv, capsys)
    assert rc == 2 and message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written


# --------------------------------------------------------------------------- continued pretraining

@pytest.mark.slow
def test_continued_pretraining_refuses_another_architecture(tmp_path, capsys):
    from tfmicle.train.cli import main as train_main
    prefix, _ = _tiny_checkpoint(tmp_path / "src")
    imported = str(tmp_path / "imported")
    assert _import(["--simclr-tf1", prefix, "--out", imported], capsys)[0] == 0
    from conftest import synthetic_cases, write_records
    data = write_records(str(tmp_path / "rec"), "train", synthetic_cases(4, 1, size=40),
                         ["a", "b", "c"])
    common = ["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--set",
              f"data.dir={data}", "--set", "data.image_size=64", "--set", "model.depth=50",
              "--set", "model.num_proj_layers=3", "--set", "pretrain.init=checkpoint"]
    # Through the run folder's config: the setting is named.
    rc = train_main(common + ["--model-dir", str(tmp_path / "a"), "--set",
                              f"pretrain.checkpoint={imported}", "--set",
                              "model.width_multiplier=0.125", "--set", "model.proj_out_dim=16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "model.width_multiplier is 0.125" in err and "\n" not in err
    # A bare prefix (no config to compare): the shapes decide, in one line.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in (tmp_path / "imported" / "checkpoints").glob("ckpt-*"):
        shutil.copy(f, bare / f.name)
    rc = train_main(common + ["--model-dir", str(tmp_path / "b"), "--set",
                              f"pretrain.checkpoint={bare}/ckpt-{fx.STEP}", "--set",
                              f"model.width_multiplier={TINY_WIDTH}", "--set",
                              "model.proj_out_dim=32"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "does not match the model" in err and "\n" not in err


@pytest.mark.slow
def test_an_imported_sk1_run_continues_without_model_settings_and_its_head_loads(tmp_path,
                                                                                capsys):
    """The imported run folder carries its architecture: continued pretraining takes
    depth, width, SK and the projection head from it; a model.* value given that differs
    is refused naming both. The ImageNet head loads through rundir's public loader."""
    from conftest import synthetic_cases, write_records
    from tfmicle.rundir import load_pretraining_model, supervised_logits
    from tfmicle.train.cli import main as train_main
    prefix, state = _tiny_checkpoint(tmp_path / "src", sk=True)
    imported = str(tmp_path / "imported")
    assert _import(["--simclr-tf1", prefix, "--out", imported], capsys)[0] == 0

    model, cfg = load_pretraining_model(imported)
    x = np.random.default_rng(0).uniform(0, 1, (3, 64, 64, 3)).astype(np.float32)
    feats = np.asarray(model.encoder(x, training=False), np.float64)
    want = feats @ state["head_supervised/linear_layer/dense/kernel"] + \
        state["head_supervised/linear_layer/dense/bias"]       # the TF1 head's values
    got = supervised_logits(model, x).numpy()
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    data = write_records(str(tmp_path / "rec"), "train", synthetic_cases(4, 1, size=40),
                         ["a", "b", "c"])
    config = tmp_path / "continue.yaml"     # no model.* at all: the checkpoint's
    config.write_text("mode: pretrain\nmethod: simclr\npretrain:\n  init: checkpoint\n"
                      "train:\n  batch_size: 4\n  train_steps: 1\n  checkpoint_steps: 1\n"
                      "  log_steps: 1\n  warmup_epochs: 0\n")
    common = ["--config", str(config), "--set", f"data.dir={data}", "--set",
              "data.image_size=64", "--set", f"pretrain.checkpoint={imported}", "--set",
              "model.global_bn=false", "-q"]
    assert train_main(common + ["--model-dir", str(tmp_path / "run")]) == 0, \
        capsys.readouterr().err[-2000:]
    saved = load_config(os.path.join(tmp_path, "run", "config.yaml")).model
    assert (saved.depth, saved.width_multiplier, saved.sk_ratio, saved.num_proj_layers,
            saved.proj_out_dim) == (50, TINY_WIDTH, simclr_tf1.SK_RATIO, 3, 16)
    capsys.readouterr()
    rc = train_main(common + ["--model-dir", str(tmp_path / "other"), "--set",
                              "model.sk_ratio=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert f"model.sk_ratio is 0.0 but the checkpoint {imported} was trained with " \
           f"{simclr_tf1.SK_RATIO}" in err
