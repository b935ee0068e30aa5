"""LARS and the warmup-cosine schedule against numpy references written from the formulas."""
import math

import keras
import numpy as np
import pytest

from tfmicle.optim import LARS, WarmupCosine, scaled_learning_rate


def lars_reference(weights, grads_per_step, lr, momentum, wd, eta, excluded, nesterov=False):
    """numpy LARS: g += wd*w; trust = eta*||w||/||g|| (1 if a norm is 0 or excluded);
    v = m*v + lr*trust*g; w -= v (nesterov: w -= m*v + lr*trust*g)."""
    w = {k: v.astype(np.float64).copy() for k, v in weights.items()}
    vel = {k: np.zeros_like(v) for k, v in w.items()}
    for grads in grads_per_step:
        for k in w:
            g = grads[k].astype(np.float64)
            if not excluded[k]:
                g = g + wd * w[k]
                wn, gn = np.linalg.norm(w[k]), np.linalg.norm(g)
                trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
            else:
                trust = 1.0
            step = lr * trust * g
            vel[k] = momentum * vel[k] + step
            w[k] = w[k] - (momentum * vel[k] + step if nesterov else vel[k])
    return w


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_numpy_over_three_steps(nesterov):
    rng = np.random.default_rng(0)
    shapes = {"conv/kernel": (3, 3, 2, 4), "dense/bias": (4,),
              "stem_batch_normalization/gamma": (4,), "head_supervised/kernel": (4, 3),
              "zero/kernel": (2, 2)}
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    init["zero/kernel"][:] = 0.0  # ||w|| = 0 -> trust 1
    variables = []
    for k, v in init.items():
        layer, name = k.split("/")
        with keras.name_scope(layer):
            variables.append(keras.Variable(v, name=name))
    assert [v.path for v in variables] == list(init)
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01, eta=0.001, nesterov=nesterov)
    steps = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
             for _ in range(3)]
    for grads in steps:
        opt.apply([grads[k] for k in init], variables)
    excluded = {k: any(p in k for p in ("batch_normalization", "bias", "head_supervised"))
                for k in init}
    ref = lars_reference(init, steps, 0.5, 0.9, 0.01, 0.001, excluded, nesterov)
    for v in variables:
        np.testing.assert_allclose(v.numpy(), ref[v.path], rtol=1e-5, atol=1e-6, err_msg=v.path)
    # Excluded and included variables really took different paths.
    assert not np.allclose(variables[1].numpy(), init["dense/bias"])


def test_lars_exclude_from_layer_adaptation_separately():
    w0 = np.array([3.0, 4.0], np.float32)
    g = np.array([0.6, 0.8], np.float32)
    with keras.name_scope("dense"):
        v = keras.Variable(w0, name="kernel")
    # Weight decay applies, trust ratio does not.
    opt = LARS(0.1, momentum=0.0, weight_decay=0.5, exclude_from_weight_decay=[],
               exclude_from_layer_adaptation=["dense"])
    opt.apply([g], [v])
    np.testing.assert_allclose(v.numpy(), w0 - 0.1 * (g + 0.5 * w0), rtol=1e-6)


def test_scaled_learning_rate():
    assert scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_learning_rate(0.1, 64, "none") == 0.1
    with pytest.raises(ValueError):
        scaled_learning_rate(0.1, 64, "cubic")


def test_warmup_cosine_values():
    s = WarmupCosine(0.3, 512, total_steps=100, warmup_steps=10, scaling="linear")
    peak = 0.3 * 512 / 256
    expect = {0: 0.0, 5: peak * 0.5, 10: peak, 55: peak * 0.5 * (1 + math.cos(math.pi * 0.5)),
              100: 0.0, 150: 0.0}
    for step, lr in expect.items():
        assert float(s(step)) == pytest.approx(lr, abs=1e-6), step
    cfg = s.get_config()
    assert float(WarmupCosine(**cfg)(37)) == pytest.approx(float(s(37)))


def test_models_are_told_which_optimizers_decay_weights_themselves():
    """build.optimizer_decays (what the models are told when built) is true exactly for
    the train.optimizer choices whose optimizer applies weight decay itself (LARS)."""
    from tfmicle import build
    from tfmicle.config import CHOICES, Config
    for name in CHOICES["train.optimizer"]:
        cfg = Config()
        cfg.train.optimizer = name
        assert build.optimizer_decays(cfg) == isinstance(build.optimizer(cfg, 10, 0), LARS), name
