"""NT-Xent against a numpy reference written from the SimCLR formula."""
import numpy as np
import pytest
import tensorflow as tf

from tfmicle.losses import nt_xent_loss


def numpy_nt_xent(z1, z2, t):
    """For every anchor k of the 2N views (z1 then z2), -log softmax over the other
    2N-1 views of its positive; SimCLR's loss = sum over the 2N anchors / N."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / t
    total = 0.0
    hits = 0
    for k in range(2 * n):
        pos = (k + n) % (2 * n)
        others = [j for j in range(2 * n) if j != k]
        logits = sim[k, others]
        m = logits.max()
        lse = m + np.log(np.exp(logits - m).sum())
        total += lse - sim[k, pos]
        if k < n:
            hits += int(others[int(np.argmax(logits))] == pos)
    return total / n, hits / n


@pytest.mark.parametrize("batch,dim,temp", [(2, 3, 0.1), (8, 16, 0.5), (13, 7, 1.0), (32, 128, 0.05)])
def test_nt_xent_matches_numpy(batch, dim, temp):
    rng = np.random.default_rng(batch * 100 + dim)
    z1 = rng.normal(size=(batch, dim)).astype(np.float32)
    z2 = (z1 + rng.normal(scale=0.8, size=(batch, dim))).astype(np.float32)
    loss, acc = nt_xent_loss(tf.constant(z1), tf.constant(z2), temperature=temp)
    ref_loss, ref_acc = numpy_nt_xent(z1, z2, temp)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-4, atol=1e-4)
    assert float(acc) == pytest.approx(ref_acc)


def test_nt_xent_without_normalisation_uses_raw_dot_products():
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(4, 5)).astype(np.float32) * 0.3
    z2 = rng.normal(size=(4, 5)).astype(np.float32) * 0.3
    loss, _ = nt_xent_loss(tf.constant(z1), tf.constant(z2), temperature=1.0, normalize=False)
    # Reference with raw dot products: undo the reference's normalisation by scaling.
    z = np.concatenate([z1, z2]).astype(np.float64)
    sim = z @ z.T
    n, total = 4, 0.0
    for k in range(8):
        others = [j for j in range(8) if j != k]
        total += np.log(np.exp(sim[k, others]).sum()) - sim[k, (k + n) % 8]
    np.testing.assert_allclose(float(loss), total / n, rtol=1e-5)


def test_perfect_alignment_gives_full_accuracy_and_low_loss():
    z = np.eye(6, dtype=np.float32)
    loss, acc = nt_xent_loss(tf.constant(z), tf.constant(z), temperature=0.05)
    assert float(acc) == 1.0
    assert float(loss) < 1e-6 * 1e3
