"""SimCLR's TF1 checkpoints (the official SimCLRv2 / v1 release, model.ckpt-NNNN) as
tfmicle models: the architecture a variable list implies, and the name of every
variable in it for every variable of our encoder, projection head and linear head.

TF1 names come from tf.layers' per-scope counters in graph-creation order:
``base_model/conv2d[_N]/kernel`` and ``base_model/batch_normalization[_N]/{gamma,
beta,moving_mean,moving_variance}``, ``head_contrastive/nl_<j>/dense/kernel`` and
``.../nl_<j>/batch_normalization/...`` (the last without beta),
``head_supervised/linear_layer/dense/{kernel,bias}``. Our ResNet builder records its
convs and batch norms in the same order (resnet.build_resnet_in_order), so the N-th
TF1 conv is our N-th conv. LARS ``/Momentum`` slots and ``global_step`` are training
state and are skipped; ``ema_model/`` holds a second (moving-average) copy of the
weights, used instead of the raw one on request.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import numpy as np

from tfmicle.cli import UsageError

ENCODER_SCOPE = "base_model/"
EMA_SCOPE = "ema_model/"
SKIPPED = (re.compile(r"/Momentum$"), re.compile(r"^global_step$"))
SK_RATIO = 0.0625  # SimCLRv2's only published selective-kernel ratio (--sk_ratio)
# sum of blocks per depth (bottleneck ResNets; SimCLR publishes no 18 / 34)
_DEPTH_OF_BLOCKS = {16: 50, 33: 101, 50: 152, 66: 200}


class CheckpointMismatch(UsageError, ValueError):
    """The checkpoint and the model do not correspond (one readable line)."""


@dataclass
class Architecture:
    """What a TF1 variable list implies (or the user states)."""
    depth: int
    width_multiplier: float
    sk_ratio: float
    small_stem: bool          # SimCLR's CIFAR stem (images <= 32 px)
    num_proj_layers: int
    proj_out_dim: int
    num_classes: int          # the linear head's classes; 0 = no head in the checkpoint


def _indexed(name: str, i: int) -> str:
    return name if i == 0 else f"{name}_{i}"


def model_variables(shapes: dict[str, list[int]], ema: bool = False) -> dict[str, list[int]]:
    """The model variables of a checkpoint listing {name: shape}: without optimizer
    slots and the step, and from the raw copy (ema False, names without ``ema_model/``)
    or the moving-average copy (ema True, the prefix removed)."""
    out = {}
    for name, shape in shapes.items():
        if any(p.search(name) for p in SKIPPED):
            continue
        if name.startswith(EMA_SCOPE) != ema:
            continue
        out[name[len(EMA_SCOPE):] if ema else name] = list(shape)
    return out


def infer_architecture(shapes: dict[str, list[int]]) -> Architecture:
    """The architecture of a model-variable listing (see model_variables):
    CheckpointMismatch when it is not a SimCLR ResNet of depth 50-200."""
    stem = shapes.get(ENCODER_SCOPE + "conv2d/kernel")
    if stem is None or len(stem) != 4:
        raise CheckpointMismatch(f"no {ENCODER_SCOPE}conv2d/kernel: not a SimCLR TF1 "
                                 "ResNet checkpoint (or pass --ema for ema_model/ copies)")
    n_conv = sum(1 for n in shapes if re.fullmatch(r"base_model/conv2d(_\d+)?/kernel", n))
    n_bn = sum(1 for n in shapes
               if re.fullmatch(r"base_model/batch_normalization(_\d+)?/gamma", n))
    sk = n_conv != n_bn  # only SK's mixing conv has no batch norm after it
    second = shapes.get(ENCODER_SCOPE + "conv2d_1/kernel", [0])
    three_conv_stem = stem[0] == 3 and second[0] == 3
    small = stem[0] == 3 and not three_conv_stem
    width = stem[-1] * (2 if three_conv_stem else 1) / 64.0
    per_block = 5 if sk else 3
    blocks, rest = divmod(n_conv - (3 if three_conv_stem else 1) - 4, per_block)
    if rest or blocks not in _DEPTH_OF_BLOCKS:
        raise CheckpointMismatch(f"{n_conv} encoder convs ({n_bn} batch norms) fit no "
                                 "SimCLR ResNet-50/101/152/200; pass --depth / --width / --sk")
    proj = 0
    while f"head_contrastive/nl_{proj}/dense/kernel" in shapes:
        proj += 1
    out_dim = shapes[f"head_contrastive/nl_{proj - 1}/dense/kernel"][-1] if proj else 0
    head = shapes.get("head_supervised/linear_layer/dense/kernel")
    return Architecture(depth=_DEPTH_OF_BLOCKS[blocks],
                        width_multiplier=int(width) if width == int(width) else width,
                        sk_ratio=SK_RATIO if sk else 0.0, small_stem=small,
                        num_proj_layers=proj, proj_out_dim=out_dim,
                        num_classes=head[-1] if head else 0)


def variable_map(encoder: keras.Model, convs: list[str], bns: list[str],
                 projection: keras.Model | None, num_proj_layers: int,
                 supervised: keras.layers.Layer | None) -> dict[str, keras.Variable]:
    """{TF1 variable name: our variable} for every variable of the encoder (convs / bns:
    its layer names in creation order, resnet.build_resnet_in_order), the projection
    head (tfmicle.models.heads.projection_head) and the linear head (a Dense with bias)."""
    out: dict[str, keras.Variable] = {}

    def add_bn(prefix: str, layer) -> None:
        for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
            v = getattr(layer, attr, None)
            if v is not None:
                out[f"{prefix}/{attr}"] = v

    for i, name in enumerate(convs):
        out[f"{ENCODER_SCOPE}{_indexed('conv2d', i)}/kernel"] = encoder.get_layer(name).kernel
    for i, name in enumerate(bns):
        add_bn(ENCODER_SCOPE + _indexed("batch_normalization", i), encoder.get_layer(name))
    if projection is not None:
        for j in range(num_proj_layers):
            out[f"head_contrastive/nl_{j}/dense/kernel"] = \
                projection.get_layer(f"head_projection_dense{j}").kernel
            add_bn(f"head_contrastive/nl_{j}/batch_normalization",
                   projection.get_layer(f"head_projection_batch_normalization{j}"))
    if supervised is not None:
        out["head_supervised/linear_layer/dense/kernel"] = supervised.kernel
        out["head_supervised/linear_layer/dense/bias"] = supervised.bias
    return out


def _listed(names, limit: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_coverage(mapping: dict[str, keras.Variable], shapes: dict[str, list[int]]) -> None:
    """CheckpointMismatch naming what is missing, left over or of another shape, unless
    every checkpoint variable maps to exactly one of ours with its shape."""
    missing = set(mapping) - set(shapes)
    extra = set(shapes) - set(mapping)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint: {_listed(missing)}")
        if extra:
            parts.append(f"{len(extra)} left over in the checkpoint: {_listed(extra)}")
        raise CheckpointMismatch("checkpoint does not match the model: " + "; ".join(parts))
    wrong = [f"{n} {list(shapes[n])} vs ours {list(v.shape)}" for n, v in mapping.items()
             if list(shapes[n]) != list(v.shape)]
    if wrong:
        raise CheckpointMismatch(f"{len(wrong)} shape(s) differ: {_listed(wrong, 3)}")


def assign(mapping: dict[str, keras.Variable], read, ema: bool = False) -> None:
    """Assigns every mapped variable from read(name) -> array (a checkpoint reader's
    get_tensor); names are read under ema_model/ when ema."""
    for name, var in mapping.items():
        value = np.asarray(read((EMA_SCOPE if ema else "") + name))
        var.assign(value.astype(var.dtype))


__all__ = ["Architecture", "CheckpointMismatch", "model_variables", "infer_architecture",
           "variable_map", "check_coverage", "assign", "SK_RATIO"]
