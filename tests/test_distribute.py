"""Two replicas (MirroredStrategy over 2 logical CPUs) must train exactly like one
device on the same global batch: negatives gathered across replicas, gradients summed
over replicas of loss / num_replicas, batch-norm statistics synchronized."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmicle.distribute import StrategyError, make_strategy
from tfmicle.models.contrastive import ContrastiveModel
from tfmicle.models.heads import projection_head
from tfmicle.models.resnet import ResNetSpec, build_resnet
from tfmicle.optim import LARS


def _model(global_bn, optimizer):
    enc = build_resnet(ResNetSpec(depth=18, width_multiplier=0.125, image_size=16,
                                  global_bn=global_bn))
    m = ContrastiveModel(enc, projection_head(enc.output_shape[-1], 2, 8, global_bn=global_bn),
                         num_classes=3, temperature=0.2)
    m.build_all(16)
    m.compile(optimizer=optimizer)
    return m


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"view1": rng.random((n, 16, 16, 3), dtype=np.float32),
            "view2": rng.random((n, 16, 16, 3), dtype=np.float32),
            "label": np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)[:n]}


def _one_step(strategy, global_bn, init_weights, optimizer_fn):
    with strategy.scope():
        m = _model(global_bn, optimizer_fn())
        m.set_weights(init_weights)
    ds = tf.data.Dataset.from_tensors(_batch()).repeat()
    hist = m.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    return hist.history, [np.array(w) for w in m.get_weights()]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer_fn", [
    lambda: keras.optimizers.SGD(0.5),
    lambda: LARS(2.0, weight_decay=1e-3),
], ids=["sgd", "lars"])
def test_two_replicas_match_one_device(optimizer_fn):
    keras.utils.set_random_seed(0)
    init = _model(True, optimizer_fn()).get_weights()
    one_hist, one_w = _one_step(tf.distribute.get_strategy(), True, init, optimizer_fn)
    mirrored = make_strategy("mirrored", num_cpu_devices=2)
    assert mirrored.num_replicas_in_sync == 2
    two_hist, two_w = _one_step(mirrored, True, init, optimizer_fn)
    for key in ("contrast_loss", "contrast_acc", "probe_loss"):
        np.testing.assert_allclose(two_hist[key][0], one_hist[key][0], atol=1e-4, err_msg=key)
    changed = 0
    for a, b, w0 in zip(one_w, two_w, init):
        np.testing.assert_allclose(b, a, atol=1e-4)
        changed += int(not np.allclose(a, w0))
    assert changed > len(init) // 2  # the step really moved the weights (and BN stats)


@pytest.mark.slow
def test_per_replica_batch_norm_differs_from_global():
    """The same comparison without synchronized BN gives different weights: shows the
    equality above depends on global BN (and that the check can fail)."""
    import keras
    init = _model(False, keras.optimizers.SGD(0.5)).get_weights()
    _, one_w = _one_step(tf.distribute.get_strategy(), False, init,
                         lambda: keras.optimizers.SGD(0.5))
    _, two_w = _one_step(make_strategy("mirrored", num_cpu_devices=2), False, init,
                         lambda: keras.optimizers.SGD(0.5))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(one_w, two_w))
    assert worst > 1e-3


def test_unknown_strategy_and_missing_tpu_are_clear_errors():
    with pytest.raises(StrategyError, match="unknown strategy 'gpu4'"):
        make_strategy("gpu4")
    with pytest.raises(StrategyError, match="no TPU"):
        make_strategy("tpu", tpu="no-such-tpu-here")


@pytest.mark.parametrize("flags,fast", [
    ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu sse2 avx2 amx_bf16 amx_tile", True),
    ("fpu sse2 avx2 avx512f", False),
])
def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path, flags, fast):
    from tfmicle.distribute import cpu_has_fast_bf16
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_fast_bf16(str(info)) is fast
    assert cpu_has_fast_bf16(str(tmp_path / "missing")) is False


def test_auto_strategy_and_precision_resolve_to_what_this_machine_has(tmp_path, monkeypatch):
    """No TPU and no GPU here: auto is the default strategy, and the precision follows
    the CPU's flags; the run's config records the resolved values."""
    from tfmicle import distribute
    from tfmicle.config import Config
    from tfmicle.train import runner
    assert not tf.config.list_physical_devices("GPU")
    for bf16 in (True, False):
        monkeypatch.setattr(distribute, "cpu_has_fast_bf16", lambda *a, bf16=bf16: bf16)
        cfg = Config()
        cfg.distribute.strategy, cfg.train.precision = "auto", "auto"
        cfg.distribute.tpu = "no-such-tpu"      # the resolver finds none, quickly
        strategy = runner.run_strategy(cfg)
        assert strategy.num_replicas_in_sync == 1
        assert cfg.distribute.strategy == "default"
        assert cfg.train.precision == ("mixed_bfloat16" if bf16 else "float32")
