"""init: imagenet — keras.applications ResNet50 behind the encoder contract, weights from
a local file (never downloaded in tests), Caffe preprocessing, freezing by stage, and a
fine-tuning run that exports."""
import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import _finetune_runs as runs
from tfmicle.train.finetune import finetune
from tfmicle.rundir import load_classifier
from tfmicle.models.classifier import (IMAGENET_ENCODER, build_imagenet_encoder,
                                       freeze_encoder)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A ResNet50 (no top) weights file in the legacy HDF5 layout of the file Keras
    downloads (resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5), with random
    values; returns (path, {layer name: [arrays]})."""
    from keras.src.legacy.saving import legacy_h5_format
    keras.utils.set_random_seed(123)
    src = keras.applications.ResNet50(include_top=False, weights=None,
                                      input_shape=(None, None, 3), pooling="avg")
    for layer in src.layers:  # non-default BN statistics too
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(1).normal(
                0, 0.1, layer.moving_mean.shape))
    path = str(tmp_path_factory.mktemp("imagenet") / "resnet50_notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    return path, {l.name: [w.numpy() for w in l.weights] for l in src.layers if l.weights}


def _base(encoder):
    return next(l for l in encoder.layers if isinstance(l, keras.Model))


def test_local_weights_file_loads_value_by_value(weights_file):
    path, want = weights_file
    enc = build_imagenet_encoder(path)
    assert enc.name == IMAGENET_ENCODER and enc.output_shape == (None, 2048)
    got = {l.name: [w.numpy() for w in l.weights] for l in _base(enc).layers if l.weights}
    assert got.keys() == want.keys()
    for name in want:
        for a, b in zip(got[name], want[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_caffe_preprocessing_matches_keras_applications():
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    enc = build_imagenet_encoder(None)
    pre = next(l for l in enc.layers if l.name == "imagenet_preprocess")
    want = keras.applications.resnet50.preprocess_input(x * 255.0)
    np.testing.assert_allclose(pre(x).numpy(), want, atol=1e-4)


def test_freezing_by_stage_on_the_imagenet_encoder():
    enc = build_imagenet_encoder(None)
    freeze_encoder(enc, 2)
    for layer in _base(enc).layers:
        if layer.weights:
            frozen = layer.name.split("_")[0] in ("conv1", "conv2", "conv3")
            assert layer.trainable != frozen, layer.name
    freeze_encoder(enc, 4)
    assert not enc.trainable_weights


@pytest.mark.slow
def test_linear_eval_from_imagenet_weights_trains_the_head_only(root, weights_file, mc_records):
    path, want = weights_file
    cfg = runs.finetune_cfg(root, "ft_imagenet", [
        "finetune.init=imagenet", f"finetune.imagenet_weights={path}", "model.depth=50",
        "model.width_multiplier=1", "finetune.fine_tune_after_block=4", "train.train_steps=2",
        "train.batch_size=4", "train.checkpoint_steps=2", "train.log_steps=2",
        "data.eval_split=", "train.learning_rate=0.5"], mc_records)
    result = finetune(cfg, verbose=0)
    assert result["end_step"] == 2
    # Rebuilt from the run (random ResNet50, then the checkpoint), as export does.
    model, *_ = load_classifier(cfg.model_dir, "latest")
    assert model.encoder.name == IMAGENET_ENCODER
    got = {l.name: [w.numpy() for w in l.weights] for l in _base(model.encoder).layers
           if l.weights}
    for name in want:  # linear evaluation: the ImageNet encoder is untouched
        for a, b in zip(got[name], want[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert np.abs(model.head.kernel.numpy()).sum() > 0


@pytest.mark.slow
def test_missing_weights_file_is_a_clear_error(root, mc_records):
    cfg = runs.finetune_cfg(root, "ft_imagenet_missing", [
        "finetune.init=imagenet", "finetune.imagenet_weights=/nowhere/w.h5", "model.depth=50",
        "model.width_multiplier=1"], mc_records)
    with pytest.raises(FileNotFoundError, match="/nowhere/w.h5 not found"):
        finetune(cfg, verbose=0)
