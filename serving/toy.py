"""Small SavedModels with the serving contract, for tests, smoke checks and benchmarks.

``python -m serving.toy OUT/<name>/1`` writes (and publishes) the mean-colour model; serve it with
``python -m serving --model-base-path OUT/<name>``.

The mean-colour model: decode (JPEG/PNG, 3 channels) -> area-resize to
``size`` x ``size`` -> scale to [0, 1] -> mean colour m (3,) -> softmax(m @ W + b).
Area resizing by an integer factor keeps the mean, so for an image whose sides
are multiples of ``size`` the expected probabilities are
``softmax(mean(pixels / 255) @ W + b)``, easy to compute in numpy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from tfmicle.model_format import publish, write_labels


def _decode(size: int, method: str):
    import tensorflow as tf

    def decode_one(data):
        img = tf.io.decode_image(data, channels=3, expand_animations=False)
        img.set_shape([None, None, 3])
        img = tf.cast(img, tf.float32) / 255.0
        return tf.image.resize(img, [size, size], method=method)

    def decode(images):
        return tf.map_fn(decode_one, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    return decode


def _finish(export_dir: Path, labels: Sequence[str] | None) -> None:
    """labels.txt, then the publish marker last (tfmicle.model_format's rule)."""
    if labels is not None:
        write_labels(export_dir, labels)
    publish(export_dir)


def save_mean_colour_model(
    export_dir: str | Path,
    weights: np.ndarray,
    bias: np.ndarray,
    labels: Sequence[str] | None = None,
    size: int = 32,
    output_name: str = "probabilities",
    with_embedding: bool = True,
) -> Path:
    """Write the mean-colour model. ``output_name != "probabilities"`` writes one
    output under that name (and no embedding): the "any single [batch, K] output" case."""
    import tensorflow as tf

    weights = np.asarray(weights, np.float32)
    bias = np.asarray(bias, np.float32)
    assert weights.shape[0] == 3 and bias.shape == (weights.shape[1],)
    decode = _decode(size, "area")

    class MeanColour(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(weights, name="w")
            self.b = tf.Variable(bias, name="b")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images):
            mean = tf.reduce_mean(decode(images), axis=[1, 2])
            probs = tf.nn.softmax(tf.matmul(mean, self.w) + self.b)
            if output_name != "probabilities":
                return {output_name: probs}
            out = {"probabilities": probs}
            if with_embedding:
                out["embedding"] = mean
            return out

    export_dir = Path(export_dir)
    module = MeanColour()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    _finish(export_dir, labels)
    return export_dir


def expected_mean_colour(pixels: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Numpy reference of the mean-colour model for HxWx3 uint8 pixels (sides multiples of size)."""
    mean = pixels.reshape(-1, 3).astype(np.float64).mean(axis=0) / 255.0
    logits = mean @ np.asarray(weights, np.float64) + np.asarray(bias, np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def build_cnn(num_classes: int = 5, size: int = 96, width: int = 32, seed: int = 0):
    """A small Keras CNN (the benchmark's stand-in for a fine-tuned classifier)."""
    import keras

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((size, size, 3))
    for i, mult in enumerate((1, 2, 4, 8)):
        x = keras.layers.Conv2D(width * mult, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(width * mult, 3, padding="same", activation="relu", name=f"conv{i}b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    embedding = x
    logits = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, [logits, embedding], name="toy_cnn")


def save_cnn_model(export_dir: str | Path, num_classes: int = 5, size: int = 96, width: int = 32,
                   labels: Sequence[str] | None = None) -> Path:
    """Write the Keras CNN behind the serving contract (decode + bilinear resize in the graph)."""
    import tensorflow as tf

    net = build_cnn(num_classes, size, width)
    decode = _decode(size, "bilinear")

    class Classifier(tf.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images):
            logits, embedding = self.net(decode(images), training=False)
            return {"probabilities": tf.nn.softmax(logits), "embedding": embedding}

    export_dir = Path(export_dir)
    module = Classifier()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    _finish(export_dir, labels if labels is not None else [f"class_{i}" for i in range(num_classes)])
    return export_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.toy", description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", help="version folder to write, e.g. models/toy/1")
    p.add_argument("--kind", choices=["mean-colour", "cnn"], default="mean-colour")
    args = p.parse_args(argv)
    if Path(args.export_dir).exists():
        sys.stderr.write(f"python -m serving.toy: error: {args.export_dir} already exists\n")
        return 2
    if args.kind == "cnn":
        save_cnn_model(args.export_dir)
    else:
        rng = np.random.default_rng(0)
        save_mean_colour_model(args.export_dir, rng.normal(0, 3, (3, 4)), rng.normal(0, 0.5, 4),
                               labels=["red", "green", "blue", "grey"])
    print(args.export_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
