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


@pytest.mark.slow
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


# ------------------------------------------------------------- SimCLRv2's SK ResNet, in numpy
# The fixture's reference outputs cover r50_1x_sk0 (test_import_checkpoint); the SK
# variant is checked here against a numpy transcription of SimCLRv2's TF1 resnet.py:
# conv2d_fixed_padding, the 3-conv stem, ResNet-D shortcuts, sk_conv2d.

def _np_conv(x, k, stride):
    """conv2d_fixed_padding: (k-1)//2 before, the rest after, then VALID (for stride 1
    this is TF's SAME). x [B, H, W, C], k [kh, kw, C, F]."""
    kh = k.shape[0]
    beg, end = (kh - 1) // 2, kh - 1 - (kh - 1) // 2
    x = np.pad(x, [(0, 0), (beg, end), (beg, end), (0, 0)])
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kh), axis=(1, 2))
    win = win[:, ::stride, ::stride]  # [B, H', W', C, kh, kw]
    return np.einsum("bhwcij,ijcf->bhwf", win, k)


def _np_bn(x, layer, relu=True):
    g = layer.gamma.numpy() if layer.gamma is not None else 1.0
    b = layer.beta.numpy() if layer.beta is not None else 0.0
    y = (x - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + 1e-5) * g + b
    return np.maximum(y, 0) if relu else y


def _np_pool(x, size, stride, pad_beg, pad_end, op, fill):
    """Pooling over an explicitly padded input; op over the windows, NaN = not counted."""
    x = np.pad(x, [(0, 0), (pad_beg, pad_end), (pad_beg, pad_end), (0, 0)],
               constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))
    return op(win[:, ::stride, ::stride], axis=(-2, -1))


def _np_sk_block(x, m, name, f, stride):
    """SimCLRv2's bottleneck_block with sk_ratio > 0 and a projection shortcut."""
    L = m.get_layer
    if stride > 1:  # fixed_padding(2): 0 before, 1 after, zeros counted; VALID 2x2 / 2
        sc = _np_pool(x, 2, 2, 0, 1, np.mean, 0.0)
    else:  # SAME 2x2 / 1: TF pads 1 after, padded cells not counted
        sc = _np_pool(x, 2, 1, 0, 1, np.nanmean, np.nan)
    sc = _np_bn(_np_conv(sc, L(name + "_proj_conv").kernel.numpy(), 1),
                L(name + "_proj_batch_normalization"), relu=False)
    y = _np_bn(_np_conv(x, L(name + "_1_conv").kernel.numpy(), 1),
               L(name + "_1_batch_normalization"))
    y = _np_bn(_np_conv(y, L(name + "_2_sk_conv").kernel.numpy(), stride),
               L(name + "_2_sk_batch_normalization"))
    a, b = y[..., :f], y[..., f:]
    g = (a + b).mean(axis=(1, 2), keepdims=True)
    z = _np_bn(_np_conv(g, L(name + "_2_sk_reduce").kernel.numpy(), 1),
               L(name + "_2_sk_reduce_batch_normalization"))
    assert z.shape[-1] == 32  # max(f * 0.0625, 32) for these widths
    mix = _np_conv(z, L(name + "_2_sk_expand").kernel.numpy(), 1)
    wa, wb = mix[..., :f], mix[..., f:]
    ea, eb = np.exp(wa - np.maximum(wa, wb)), np.exp(wb - np.maximum(wa, wb))
    y = a * ea / (ea + eb) + b * eb / (ea + eb)
    y = _np_bn(_np_conv(y, L(name + "_3_conv").kernel.numpy(), 1),
               L(name + "_3_batch_normalization"), relu=False)
    return np.maximum(y + sc, 0)


def test_sk_resnet_is_simclrv2s_in_numpy():
    spec = ResNetSpec(depth=50, width_multiplier=0.125, sk_ratio=0.0625, image_size=64,
                      global_bn=False)
    m = build_resnet(spec)
    rng = np.random.default_rng(0)
    for v in m.weights:  # random BN statistics and gammas too (the zero-init would hide a block)
        v.assign(rng.uniform(0.5, 1.5, v.shape) if "variance" in v.path or "gamma" in v.path
                 else rng.normal(0, 0.3, v.shape))
    taps = ["stem_pool", "block_group1_block0_out", "block_group1_block2_out",
            "block_group2_block0_out"]
    sub = keras.Model(m.input, [m.get_layer(t).output for t in taps])
    x = rng.random((2, 35, 35, 3)).astype(np.float32)  # 9 x 9 into block group 2: odd sizes
    got = [o.numpy().astype(np.float64) for o in sub(x, training=False)]
    L = m.get_layer
    s = _np_bn(_np_conv(x.astype(np.float64), L("stem_a_conv").kernel.numpy(), 2),
               L("stem_a_batch_normalization"))
    s = _np_bn(_np_conv(s, L("stem_b_conv").kernel.numpy(), 1), L("stem_b_batch_normalization"))
    s = _np_bn(_np_conv(s, L("stem_c_conv").kernel.numpy(), 1), L("stem_c_batch_normalization"))
    assert L("stem_a_conv").kernel.shape == (3, 3, 3, 4) and s.shape[-1] == 8  # 32w, 32w, 64w
    n = s.shape[1]  # TF SAME max-pool 3x3 / 2
    pad = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
    s = _np_pool(s, 3, 2, pad // 2, pad - pad // 2, np.max, -np.inf)
    np.testing.assert_allclose(got[0], s, rtol=1e-4, atol=1e-4)
    b1 = _np_sk_block(got[0], m, "block_group1_block0", 8, 1)
    np.testing.assert_allclose(got[1], b1, rtol=1e-4, atol=1e-4 * np.abs(b1).max())
    b2 = _np_sk_block(got[2], m, "block_group2_block0", 16, 2)
    np.testing.assert_allclose(got[3], b2, rtol=1e-4, atol=1e-4 * np.abs(b2).max())
