"""SimCLRv2 projection head and the supervised (classification) head."""
from __future__ import annotations

import keras
from keras import layers


def projection_head(input_dim: int, num_layers: int = 3, out_dim: int = 128,
                    bn_momentum: float = 0.9, global_bn: bool = True,
                    dtype: str = "float32", keep: int | None = None) -> keras.Model:
    """SimCLRv2 projection MLP: features [B, input_dim] -> z [B, out_dim] (float32).

    Each layer is Dense without bias + BN; hidden layers (width input_dim) end in ReLU;
    the last layer's BN has no centre (beta) and no ReLU. num_layers 0 = identity.
    keep: only the first `keep` layers of that head, exactly as they are in it (same
    names and shapes), for fine-tuning from a layer of the head (SimCLRv2's
    ft_proj_selector): [B, input_dim] -> [B, input_dim] (or out_dim when keep = num_layers).
    """
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i in range(num_layers if keep is None else min(keep, num_layers)):
        last = i == num_layers - 1
        x = layers.Dense(out_dim if last else input_dim, use_bias=False, dtype=dtype,
                         kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                         name=f"head_projection_dense{i}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, center=not last,
                                      synchronized=global_bn, dtype=dtype,
                                      name=f"head_projection_batch_normalization{i}")(x)
        if not last:
            x = layers.ReLU(dtype=dtype, name=f"head_projection_relu{i}")(x)
    x = layers.Activation("linear", dtype="float32", name="projection")(x)
    return keras.Model(inputs, x, name="head_projection")


def supervised_head(num_classes: int, name: str = "head_supervised") -> layers.Dense:
    """Linear classifier on features: [B, C] -> logits [B, num_classes] (float32, so the
    softmax / sigmoid and the loss stay in float32 under mixed precision). Its name keeps
    it out of LARS weight decay and trust ratio."""
    return layers.Dense(num_classes, dtype="float32",
                        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                        name=name)
