"""LARS optimizer, warmup + cosine learning-rate schedule and the optimizer factory."""
from __future__ import annotations

import math
import re
from typing import Sequence

import keras
from keras import ops

EXCLUDE_DEFAULT = ("batch_normalization", "bias", "head_supervised")


class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as used by SimCLR.

    Per variable w with gradient g (classic momentum m, learning rate lr):
        g <- g + wd * w                          (unless excluded from weight decay)
        trust = eta * ||w|| / ||g||              (1 when either norm is 0, or excluded)
        v <- m * v + lr * trust * g
        w <- w - v                               (nesterov: w <- w - (m * v + lr * trust * g))
    Exclusion lists are regexes searched in the variable path (e.g. "resnet/conv1/kernel").
    exclude_from_layer_adaptation defaults to exclude_from_weight_decay.
    """

    def __init__(self, learning_rate=0.001, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False,
                 exclude_from_weight_decay: Sequence[str] | None = EXCLUDE_DEFAULT,
                 exclude_from_layer_adaptation: Sequence[str] | None = None,
                 name: str = "lars", **kwargs):
        # The base class's weight decay is decoupled (AdamW-style); LARS couples it into g.
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)
        self.exclude_from_weight_decay_patterns = list(exclude_from_weight_decay or [])
        self.exclude_from_layer_adaptation_patterns = (
            list(exclude_from_layer_adaptation) if exclude_from_layer_adaptation is not None
            else list(self.exclude_from_weight_decay_patterns))

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = self.add_optimizer_variables(var_list, "momentum")

    @staticmethod
    def _matches(path: str, patterns: Sequence[str]) -> bool:
        return any(re.search(p, path) for p in patterns)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        w = variable
        # On the TF backend update_step sees the raw tf.Variable; the Keras path is kept
        # on the optimizer's own list of tracked variables.
        index = self._get_variable_index(variable)
        path = self._trainable_variables[index].path
        if self.lars_weight_decay and not self._matches(path, self.exclude_from_weight_decay_patterns):
            g = g + self.lars_weight_decay * w
        if self._matches(path, self.exclude_from_layer_adaptation_patterns):
            trust = ops.cast(1.0, variable.dtype)
        else:
            w_norm = ops.sqrt(ops.sum(ops.square(w)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            ok = ops.logical_and(ops.greater(w_norm, 0.0), ops.greater(g_norm, 0.0))
            trust = ops.where(ok, self.eta * w_norm / ops.where(ok, g_norm, 1.0), 1.0)
        v = self.momentums[index]
        scaled = lr * trust * g
        v_new = self.momentum * v + scaled
        self.assign(v, v_new)
        if self.nesterov:
            self.assign_sub(variable, self.momentum * v_new + scaled)
        else:
            self.assign_sub(variable, v_new)

    def get_config(self):
        config = super().get_config()
        config.update({
            "momentum": self.momentum,
            "weight_decay": self.lars_weight_decay,
            "eta": self.eta,
            "nesterov": self.nesterov,
            "exclude_from_weight_decay": self.exclude_from_weight_decay_patterns,
            "exclude_from_layer_adaptation": self.exclude_from_layer_adaptation_patterns,
        })
        return config


def scaled_learning_rate(base_learning_rate: float, batch_size: int, scaling: str) -> float:
    """SimCLR's LR scaling: "linear" = base * batch / 256, "sqrt" = base * sqrt(batch),
    "none" = base."""
    if scaling == "linear":
        return base_learning_rate * batch_size / 256.0
    if scaling == "sqrt":
        return base_learning_rate * math.sqrt(batch_size)
    if scaling == "none":
        return base_learning_rate
    raise ValueError(f"unknown learning-rate scaling {scaling!r} (linear | sqrt | none)")


@keras.saving.register_keras_serializable(package="tfmicle")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to the scaled LR over warmup_steps, then cosine decay to 0
    at total_steps."""

    def __init__(self, base_learning_rate: float, batch_size: int, total_steps: int,
                 warmup_steps: int = 0, scaling: str = "linear"):
        self.base_learning_rate = float(base_learning_rate)
        self.batch_size = int(batch_size)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.scaling = scaling
        self.peak = scaled_learning_rate(self.base_learning_rate, self.batch_size, scaling)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup_lr = self.peak * step / warm
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine_lr = self.peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            return ops.where(step < self.warmup_steps, warmup_lr, cosine_lr)
        return cosine_lr

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "batch_size": self.batch_size,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "scaling": self.scaling}


def make_optimizer(name: str, learning_rate, momentum: float = 0.9, weight_decay: float = 0.0,
                   exclude: Sequence[str] = EXCLUDE_DEFAULT) -> keras.optimizers.Optimizer:
    """lars | momentum | sgd | adam. Weight decay is handled by LARS itself (skipping the
    variables whose path matches an `exclude` pattern); for the others the model adds
    an L2 term that skips batch norm (tfmicle.build.optimizer_decays tells the models)."""
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay,
                    exclude_from_weight_decay=exclude)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise ValueError(f"unknown optimizer {name!r} (lars | momentum | sgd | adam)")
