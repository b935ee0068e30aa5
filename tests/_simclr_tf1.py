"""The SimCLRv2 TF1 fixture (../shared/fixtures/simclrv2_tf1, see its README.txt):
variable lists of checkpoints written by the official TF1 code, its values rule, the
input images and the reference outputs. Helpers to read it and to write checkpoints in
its format with tf.raw_ops.SaveV2 (as the fixture's own regeneration check did)."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

FIXTURE = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                        "shared", "fixtures", "simclrv2_tf1"))
MODELS = ("r50_1x_sk0", "r50_1x_sk1", "r101_1x_sk0", "r50_2x_sk1")
STEP = 250228  # the fixture's global_step (the published checkpoints' step)


def variables(model: str) -> list[tuple[str, list[int], str, str]]:
    """Lines of variables_<model>.tsv in file order: (name, shape, dtype, kind)."""
    out = []
    with open(os.path.join(FIXTURE, f"variables_{model}.tsv")) as f:
        for line in f:
            name, shape, dtype, kind = line.rstrip("\n").split("\t")
            out.append((name, [int(d) for d in shape.split(",")] if shape else [], dtype, kind))
    return out


def rule_value(i: int, name: str, shape: list[int], kind: str) -> np.ndarray:
    """The fixture's VALUES RULE for line i (verbatim from its README)."""
    if kind == "step":
        return np.array(STEP, np.int64)
    if kind == "slot":
        return np.zeros(shape, np.float32)
    rng = np.random.default_rng(i)
    k = rng.integers(-2, 3, size=shape)
    if name.endswith("/kernel"):
        v = k * np.sqrt(1.0 / int(np.prod(shape[:-1])))
    elif name.endswith("/gamma"):
        v = 1 + 0.1 * k
    elif name.endswith("/beta"):
        v = 0.1 * k
    elif name.endswith("/moving_mean"):
        v = 0.1 * k
    elif name.endswith("/moving_variance"):
        v = 1 + 0.125 * (k + 2)
    else:  # /bias and anything else
        v = 0.1 * k
    return v.astype(np.float32)


def save_v2(prefix: str, tensors: dict[str, np.ndarray]) -> str:
    """A name-based (TF1 Saver format) checkpoint of the tensors at prefix."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return prefix


def materialise(model: str, prefix: str, stand_in: bool = False) -> str:
    """Writes the model's checkpoint: the values rule, or (stand_in) tiny tensors of the
    right shapes (zeros) for lists whose real size is not worth writing."""
    tensors = {}
    for i, (name, shape, dtype, kind) in enumerate(variables(model)):
        if stand_in:
            tensors[name] = (np.array(STEP, np.int64) if kind == "step"
                             else np.zeros(shape, np.float32))
        else:
            tensors[name] = rule_value(i, name, shape, kind)
    return save_v2(prefix, tensors)


def inputs() -> np.ndarray:
    """The fixture's images as the model sees them: float32 [4, 224, 224, 3] in [0, 1]."""
    return np.load(os.path.join(FIXTURE, "inputs.npy")).astype(np.float32) / 255.0


def outputs() -> dict[str, np.ndarray]:
    """The TF1 reference outputs of r50_1x_sk0 on inputs()."""
    with np.load(os.path.join(FIXTURE, "outputs_r50_1x_sk0.npz")) as z:
        return {k: z[k] for k in z.files}


def tf1_state(model, spec, num_proj_layers: int) -> dict[str, np.ndarray]:
    """{TF1 name: value} of a tfmicle ContrastiveModel (encoder, projection head and
    probe, when it has one) under the TF1 names: to write small stand-in checkpoints in
    the official format from a tiny model (the name mapping itself is checked against
    the official code's variable lists and outputs in test_import_checkpoint)."""
    from tfmicle.models import simclr_tf1
    from tfmicle.models.resnet import build_resnet_in_order
    _, convs, bns = build_resnet_in_order(spec)  # layer names only
    mapping = simclr_tf1.variable_map(model.encoder, convs, bns, model.projection,
                                      num_proj_layers, model.probe)
    return {name: v.numpy() for name, v in mapping.items()}


def with_training_state(state: dict[str, np.ndarray], step: int = STEP) -> dict[str, np.ndarray]:
    """A model's TF1 state plus what a TF1 training checkpoint also holds: a LARS
    Momentum slot per trainable variable and global_step."""
    out = dict(state)
    for name, v in state.items():
        if not name.endswith(("/moving_mean", "/moving_variance")):
            out[name + "/Momentum"] = np.zeros_like(v)
    out["global_step"] = np.array(step, np.int64)
    return out
