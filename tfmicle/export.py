"""`python -m tfmicle.export`: a fine-tuning run -> a versioned SavedModel that
TensorFlow Serving, ``python -m serving`` and ``tfmicle.score`` load unchanged.

    python -m tfmicle.export --model-dir RUN --out MODELS/<name>[/<version>]

Layout (TF Serving's model repository, written through tfmicle.model_format):
``MODELS/<name>/<version>/`` with saved_model.pb, variables/, assets/labels.txt (class
names, one per line, index order) and assets/metadata.json. Without a version, the next
free integer is used. The version folder is written under a temporary name, published
(``model_format.publish``: the marker ``published.json``, written last) and renamed into
place, so a server polling the repository never sees half a model.

Signatures:
- ``serving_default``: ``images`` 1-D tf.string (encoded JPEG / PNG / BMP / GIF) ->
  ``probabilities`` [batch, K] float32 (softmax, or per-class sigmoid for multi-label)
  and ``embedding`` [batch, D] float32 (the encoder's pooled features). The graph runs
  tfmicle's one eval preprocessing (decode, centre crop, bicubic resize) per image.
- ``serving_pixels``: ``pixels`` float32 [batch, H, W, 3] RGB in [0, 1], i.e. decoded
  images; the same centre crop + resize runs in the graph, so decoded pixels give
  exactly what ``serving_default`` gives for the encoded image.
The module also keeps ``predict_preprocessed(pixels [batch, S, S, 3])`` (no
preprocessing; not a signature) for batch scoring that preprocesses in tf.data.
Map of the code: docs/architecture.md.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import sys
import tempfile

from tfmicle import cli
from tfmicle import model_format as mf

log = logging.getLogger("tfmicle.export")


def resolve_out(out: str) -> tuple[str, int]:
    """--out MODELS/<name> -> (MODELS/<name>, next version); MODELS/<name>/<n> ->
    (MODELS/<name>, n), which must not exist yet."""
    out = os.path.normpath(out)
    last = os.path.basename(out)
    if mf.parse_uint(last) is not None:
        base, version = os.path.dirname(out) or ".", mf.parse_uint(last)
        if version < 1:
            raise cli.UsageError(f"version must be a positive integer, got {last}")
        if os.path.exists(out):
            raise cli.UsageError(f"{out} already exists (versions are immutable; omit the "
                                 "version to get the next free one)")
        return base, version
    if os.path.isfile(out):
        raise cli.UsageError(f"{out} is a file, not a model folder")
    return out, mf.next_version(out)


def build_module(model, task: str, image_size: int):
    """The tf.Module with the serving signatures around a Classifier."""
    import tensorflow as tf

    from tfmicle.data.augment import center_crop_resize, preprocess_eval
    from tfmicle.tasks import probabilities

    size = int(image_size)
    pixel_spec = tf.TensorSpec([size, size, 3], tf.float32)

    class ClassifierModule(tf.Module):
        def __init__(self):
            super().__init__(name="tfmicle_classifier")
            self.model = model

        def _outputs(self, pixels):
            feats, logits = self.model.features_and_logits(pixels, training=False)
            return {mf.PROBABILITIES_OUTPUT: tf.cast(probabilities(task, logits), tf.float32),
                    mf.EMBEDDING_OUTPUT: tf.cast(feats, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=mf.IMAGES_INPUT)])
        def serve_images(self, images):
            pixels = tf.map_fn(lambda s: preprocess_eval(s, size), images,
                               fn_output_signature=pixel_spec)
            return self._outputs(pixels)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                    name="pixels")])
        def serve_pixels(self, pixels):
            pixels = tf.map_fn(lambda p: center_crop_resize(p, size), pixels,
                               fn_output_signature=pixel_spec)
            return self._outputs(pixels)

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32,
                                                    name="pixels")])
        def predict_preprocessed(self, pixels):
            return self._outputs(pixels)

    return ClassifierModule()


def export(model_dir: str, out: str, checkpoint: str = "auto", verify: bool = True) -> dict:
    """Exports a fine-tuning run; returns {"path", "version", "metadata"}."""
    import numpy as np
    import tensorflow as tf

    import tfmicle
    from tfmicle.config import config_hash, to_dict
    from tfmicle.data.augment import CROP_PROPORTION, preprocess_eval
    from tfmicle.rundir import (BEST_JSON, load_classifier, read_json, resolve_checkpoint,
                                validation_for_step)
    from tfmicle.tasks import probabilities

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model dir {model_dir} not found")
    base, version = resolve_out(out)
    kind, _ = resolve_checkpoint(model_dir, checkpoint)
    model, cfg, info, prefix = load_classifier(model_dir, checkpoint)
    task, class_names = info["task"], list(info["class_names"])
    size = cfg.data.image_size
    m = re.search(r"ckpt-(\d+)$", prefix)
    step = int(m.group(1)) if m else None
    best = read_json(os.path.join(model_dir, BEST_JSON)) or {}
    if kind == "best":
        step = best.get("step")
        validation = best.get("metrics")
    else:
        row = validation_for_step(model_dir, step)
        validation = {k: v for k, v in row.items() if k != "step"} if row else None
    module = build_module(model, task, size)
    metadata = {
        "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION,
        "task": task, "class_names": class_names, "num_classes": len(class_names),
        "image_size": size, "crop_proportion": CROP_PROPORTION, "embedding_dim":
            int(model.encoder.output_shape[-1]),
        "encoder": info.get("encoder", "resnet"),
        "config_hash": config_hash(cfg), "config": to_dict(cfg),
        "checkpoint": os.path.abspath(prefix), "checkpoint_kind": kind, "step": step,
        "best_metric": best.get("metric") if kind == "best" else None,
        "validation": validation, "auc_classes": info.get("auc_classes"),
        "train": {k: info.get(k) for k in ("data_dir", "train_split", "eval_split",
                                           "label_fraction", "train_cases", "train_images",
                                           "init")},
        "signatures": {
            "serving_default": {"inputs": {"images": "string [batch] encoded images"},
                                "outputs": {"probabilities": f"float32 [batch, {len(class_names)}]",
                                            "embedding": "float32 [batch, D]"}},
            "serving_pixels": {"inputs": {"pixels": "float32 [batch, H, W, 3] RGB in [0, 1]"},
                               "outputs": "as serving_default"}},
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "tfmicle_version": tfmicle.__version__, "tensorflow_version": tf.__version__,
    }
    os.makedirs(base, exist_ok=True)
    final = os.path.join(base, str(version))
    tmp = tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=base)
    try:
        tf.saved_model.save(module, tmp, signatures={
            mf.SIGNATURE: module.serve_images,
            mf.PIXELS_SIGNATURE: module.serve_pixels})
        mf.write_labels(tmp, class_names)
        mf.write_metadata(tmp, metadata)
        if verify:
            probes = mf.probe_images()
            loaded = tf.saved_model.load(tmp)
            got = loaded.signatures[mf.SIGNATURE](**{mf.IMAGES_INPUT: tf.constant(probes)})
            pixels = tf.stack([preprocess_eval(tf.constant(p), size) for p in probes])
            want = probabilities(task, model(pixels, training=False)).numpy()
            err = float(np.max(np.abs(got[mf.PROBABILITIES_OUTPUT].numpy() - want)))
            if not err <= 1e-4:
                raise RuntimeError(f"exported model disagrees with the Keras model "
                                   f"(max |diff| {err:.2e}); not published")
            log.info("verified: SavedModel and Keras model agree (max |diff| %.1e)", err)
        mf.publish(tmp)  # the publish marker: the last file written (model_format's rule)
        if os.path.exists(final):
            raise cli.UsageError(f"{final} appeared while exporting; not overwritten")
        os.rename(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (%s checkpoint %s, step %s) to %s", model_dir, kind, prefix, step,
             final)
    return {"path": final, "version": version, "metadata": metadata}


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m tfmicle.export",
        description="Export a fine-tuning run as a versioned SavedModel (serving_default: "
                    "encoded images -> probabilities + embedding; serving_pixels: float "
                    "pixels) with assets/labels.txt and assets/metadata.json.")
    p.add_argument("--model-dir", required=True, help="fine-tuning run folder (model_dir)")
    p.add_argument("--out", required=True,
                   help="MODELS/<name> (next free version) or MODELS/<name>/<version>")
    p.add_argument("--checkpoint", default="auto",
                   help="auto (best if kept, else latest) | best | latest | a checkpoint "
                        "prefix (default: auto)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip reloading the SavedModel and comparing it with the Keras model")
    return cli.add_output_flags(p, quiet=False)


def main(argv: list[str] | None = None) -> int:
    args = cli.start(build_parser(), argv)

    def body() -> int:
        from tfmicle.config import ConfigError
        try:
            result = export(args.model_dir, args.out, args.checkpoint, not args.no_verify)
        except ConfigError as e:
            raise cli.UsageError(str(e)) from None
        except RuntimeError as e:  # the exported graph disagrees with the Keras model
            log.error("%s", e)
            return 1
        print(result["path"])
        return 0

    return cli.run("tfmicle.export", body)


if __name__ == "__main__":
    sys.exit(main())
