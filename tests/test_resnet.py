"""The encoder against published parameter counts and SimCLRv2's structural rules."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmicle.models.heads import projection_head
from tfmicle.models.resnet import ResNetSpec, build_resnet, stage_of


def n_trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.mark.parametrize("depth,expected", [(18, 11_176_512), (50, 23_508_032)])
def test_parameter_counts_match_torchvision_resnets_without_fc(depth, expected):
    # torchvision resnet18 / resnet50 (11,689,512 / 25,557,032) minus the 1000-way fc.
    assert n_trainable(build_resnet(ResNetSpec(depth=depth, image_size=224))) == expected


def test_resnet50_2x_sk_has_simclrv2s_140m_parameters():
    m = build_resnet(ResNetSpec(depth=50, width_multiplier=2, sk_ratio=0.0625, image_size=224))
    assert 139e6 < n_trainable(m) < 141e6  # SimCLRv2 Table 1: R50 (2x+SK) 140M


def test_small_image_stem_keeps_resolution_and_last_bn_is_zero():
    m = build_resnet(ResNetSpec(depth=18, width_multiplier=0.25, image_size=32))
    sub = keras.Model(m.input, m.get_layer("block_group1_block0_out").output)
    assert sub(tf.zeros([1, 32, 32, 3])).shape == (1, 32, 32, 16)
    big = build_resnet(ResNetSpec(depth=18, width_multiplier=0.25, image_size=64))
    sub = keras.Model(big.input, big.get_layer("block_group1_block0_out").output)
    assert sub(tf.zeros([1, 64, 64, 3])).shape == (1, 16, 16, 16)  # /2 conv, /2 max-pool
    last_bns = [l for l in m.layers if l.name.endswith("_2_batch_normalization")]
    assert len(last_bns) == 8
    for l in last_bns:
        assert np.all(l.gamma.numpy() == 0) and l.epsilon == 1e-5 and l.momentum == 0.9
    assert m.output_shape == (None, 128)  # 512 * 0.25


def test_stages_and_batch_norm_names():
    m = build_resnet(ResNetSpec(depth=18, width_multiplier=0.125, image_size=32))
    stages = {stage_of(l.name) for l in m.layers}
    assert {0, 1, 2, 3, 4} <= stages
    for v in m.trainable_variables:
        if v.path.endswith(("gamma", "beta")):
            assert "batch_normalization" in v.path


def test_projection_head_structure():
    h = projection_head(64, num_layers=3, out_dim=16)
    dense = [l for l in h.layers if "dense" in l.name]
    bns = [l for l in h.layers if "batch_normalization" in l.name]
    assert [d.units for d in dense] == [64, 64, 16] and not any(d.use_bias for d in dense)
    assert [b.center for b in bns] == [True, True, False]
    assert h(tf.zeros([2, 64])).shape == (2, 16)
