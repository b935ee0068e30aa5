"""`python -m tfmicle.export`: a fine-tuning run -> a versioned SavedModel that
TensorFlow Serving, ``python -m serving`` and ``tfmicle.score`` load unchanged.

    python -m tfmicle.export --model-dir RUN --out MODELS/<name>[/<version>] [--calibrate SPLIT]

Layout (TF Serving's model repository, written through tfmicle.model_format):
``MODELS/<name>/<version>/`` with saved_model.pb, variables/, assets/labels.txt (class
names, one per line, index order), assets/metadata.json and the model card
(model_card.json / .md, tfmicle.model_card; not listed in the marker, so a deployer can
complete it in place). Without a version, the next
free integer is used. ``--out`` may be a URL (``gs://bucket/models/<name>``). A local
version folder is written under a temporary name, published (``model_format.publish``:
the marker ``published.json``, written last) and renamed into place; an object store has
no atomic rename, so there the folder is written in place and the marker last
(``model_format.staging_for``). Either way a server polling the repository never loads
half a model.

Signatures:
- ``serving_default``: ``images`` 1-D tf.string (encoded JPEG / PNG / BMP / GIF) ->
  ``probabilities`` [batch, K] float32 (softmax, or per-class sigmoid for multi-label)
  and ``embedding`` [batch, D] float32 (the encoder's pooled features). The graph runs
  tfmicle's one eval preprocessing (decode, centre crop, bicubic resize) per image.
- ``serving_pixels``: ``pixels`` float32 [batch, H, W, 3] RGB in [0, 1], i.e. decoded
  images; the same centre crop + resize runs in the graph, so decoded pixels give
  exactly what ``serving_default`` gives for the encoded image.
- ``serving_explain``: ``images`` as serving_default and ``classes`` int32 [batch]
  (-1 = the top class) -> ``probabilities``, ``heatmap`` [batch, S, S] in [0, 1]
  (Grad-CAM on the encoder's last conv block, tfmicle.models.gradcam),
  ``explained_class`` [batch] and ``pixels`` [batch, S, S, 3] (the model's input, what
  the heatmap lies over). It runs a backward pass, so it is a separate signature.
The module also keeps ``predict_preprocessed(pixels [batch, S, S, 3])`` (no
preprocessing; not a signature) for batch scoring that preprocesses in tf.data.

``--calibrate SPLIT`` fits temperature scaling (tfmicle.calibration: one T multi-class,
one per class multi-label, minimising NLL) on the logits of a labelled split of the
run's records and bakes it in: every signature returns probabilities of logits / T.
metadata.json "calibration" records T and the split's ECE / NLL / Brier before and after.
Map of the code: docs/architecture.md.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import sys
from dataclasses import dataclass

from tfmicle import cli, fileio
from tfmicle import model_format as mf
from tfmicle.model_card.store import write_card

log = logging.getLogger("tfmicle.export")


def resolve_out(out: str) -> tuple[str, int]:
    """--out MODELS/<name> -> (MODELS/<name>, next version); MODELS/<name>/<n> ->
    (MODELS/<name>, n), which must not exist yet."""
    out = fileio.normpath(out)
    last = fileio.basename(out)
    if mf.parse_uint(last) is not None:
        base, version = fileio.dirname(out) or ".", mf.parse_uint(last)
        if version < 1:
            raise cli.UsageError(f"version must be a positive integer, got {last}")
        if fileio.exists(out):
            raise cli.UsageError(f"{out} already exists (versions are immutable; omit the "
                                 "version to get the next free one)")
        return base, version
    if fileio.isfile(out):
        raise cli.UsageError(f"{out} is a file, not a model folder")
    return out, mf.next_version(out)


def build_module(model, task: str, image_size: int, temperature=None):
    """The tf.Module with the serving signatures around a Classifier. temperature: None
    (uncalibrated, T = 1), a float (multiclass) or a list [K] (multilabel); the
    probabilities are those of logits / T."""
    import tensorflow as tf

    from tfmicle.data.augment import center_crop_resize, preprocess_eval
    from tfmicle.models.gradcam import (feature_map_model, grad_cam, receptive_field_centres,
                                        upsampling_matrix)
    from tfmicle.tasks import probabilities

    size = int(image_size)
    pixel_spec = tf.TensorSpec([size, size, 3], tf.float32)
    t0 = tf.constant(1.0 if temperature is None else temperature, tf.float32)
    feature_map = feature_map_model(model.encoder)  # shares the encoder's weights
    upsample = upsampling_matrix(receptive_field_centres(feature_map, size), size)

    class ClassifierModule(tf.Module):
        def __init__(self):
            super().__init__(name="tfmicle_classifier")
            self.model = model
            self.feature_map = feature_map
            self.temperature = tf.Variable(t0, trainable=False, name="temperature")

        def _probs(self, logits):
            return tf.cast(probabilities(task, tf.cast(logits, tf.float32) / self.temperature),
                           tf.float32)

        def _outputs(self, pixels):
            feats, logits = self.model.features_and_logits(pixels, training=False)
            return {mf.PROBABILITIES_OUTPUT: self._probs(logits),
                    mf.EMBEDDING_OUTPUT: tf.cast(feats, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=mf.IMAGES_INPUT),
                                      tf.TensorSpec([None], tf.int32, name=mf.CLASSES_INPUT)])
        def serve_explain(self, images, classes):
            pixels = tf.map_fn(lambda s: preprocess_eval(s, size), images,
                               fn_output_signature=pixel_spec)
            logits, heat, cls = grad_cam(self.feature_map, self.model.logits_of, pixels,
                                         classes, upsample)
            return {mf.PROBABILITIES_OUTPUT: self._probs(logits), mf.HEATMAP_OUTPUT: heat,
                    mf.EXPLAINED_CLASS_OUTPUT: cls, mf.PIXELS_OUTPUT: pixels}

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


def split_logits(model, task: str, data_dir: str, split: str, num_classes: int,
                 image_size: int, batch_size: int = 64):
    """(logits [N, K] float64, labels) of every image of a records split through the eval
    preprocessing (pipeline.evaluation, as validation); labels as tfmicle.metrics takes
    them (int [N], -1 unlabeled; or float [N, K])."""
    import numpy as np

    from tfmicle.data import records
    from tfmicle.data.pipeline import PipelineConfig, evaluation
    from tfmicle.tasks import MULTICLASS

    splits = records.load_dataset_info(data_dir).get("splits", {})
    if split not in splits:
        raise cli.UsageError(f"--calibrate: split '{split}' not in {data_dir} (has: "
                             f"{', '.join(splits)})")
    logits, labels = [], []
    for batch in evaluation(PipelineConfig(data_dir, split, batch_size, image_size),
                            num_classes if task != MULTICLASS else 0):
        logits.append(model(batch["image"], training=False).numpy().astype(np.float64))
        labels.append(batch["label_class"].numpy() if task == MULTICLASS
                      else batch["label_multi"].numpy().astype(np.float64))
    if not logits:
        raise cli.UsageError(f"--calibrate: split '{split}' of {data_dir} has no images")
    return np.concatenate(logits), np.concatenate(labels)


def fit_calibration(model, task: str, data_dir: str, split: str, num_classes: int,
                    image_size: int) -> dict:
    """Temperature scaling fitted on a labelled split: {"method", "split", "data_dir",
    "num_images", "temperature" (float | [K]), "before" / "after": {"ece", "nll",
    "brier"} on that split, image level}."""
    from tfmicle import calibration as C
    from tfmicle.metrics import has_labels

    logits, labels = split_logits(model, task, data_dir, split, num_classes, image_size)
    if not has_labels(task, labels):
        raise cli.UsageError(f"--calibrate: split '{split}' of {data_dir} has no labels")
    temperature = C.fit_temperature(task, logits, labels)

    def summary(t):
        m = C.calibration_metrics(task, C.scaled_probabilities(task, logits, t), labels)
        return {k: m[k] for k in ("ece", "nll", "brier")}
    out = {"method": "temperature scaling (NLL)", "split": split,
           "data_dir": fileio.abspath(data_dir), "num_images": int(len(logits)),
           "temperature": temperature, "at_bound": C.at_bound(temperature),
           "before": summary(1.0), "after": summary(temperature)}
    if out["at_bound"]:
        log.warning("--calibrate: a temperature sits on the search bound %s (the split's "
                    "NLL keeps falling beyond it, e.g. every prediction is right); a larger "
                    "or harder calibration split gives a better estimate", C.T_RANGE)
    log.info("calibrated on %s (%d images): T = %s; ECE %.4f -> %.4f, NLL %.4f -> %.4f",
             split, len(logits), temperature, out["before"]["ece"], out["after"]["ece"],
             out["before"]["nll"], out["after"]["nll"])
    return out


def model_card(model_dir: str, cfg, info: dict, metadata: dict, name: str, version: int) -> dict:
    """The version's model card (tfmicle.model_card) from metadata.json's facts, the
    records' dataset.json and the pretraining runs the encoder came from."""
    from tfmicle.data import records
    from tfmicle.model_card.build import build_card
    from tfmicle.rundir import pretraining_history

    try:
        dataset = records.load_dataset_info(info.get("data_dir") or cfg.data.dir)
    except (OSError, ValueError):  # a TFDS source, or records moved: the card says unknown
        dataset = None
    history = pretraining_history(cfg.finetune.checkpoint) \
        if cfg.finetune.init == "checkpoint" else []
    return build_card(metadata, name, version, dataset, info, history)


@dataclass(frozen=True)
class ExportOptions:
    """How export() exports a run: the CLI's flags, with its defaults."""
    checkpoint: str = "auto"       # auto (best if kept, else latest) | best | latest | a prefix
    verify: bool = True            # reload the SavedModel and compare it with the Keras model
    calibrate: str | None = None   # a labelled split of the run's records to fit temperature
                                   # scaling on; None: uncalibrated

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExportOptions:
        """The options of parsed build_parser() arguments."""
        return cls(checkpoint=args.checkpoint, verify=not args.no_verify,
                   calibrate=args.calibrate)


def export(model_dir: str, out: str, options: ExportOptions = ExportOptions()) -> dict:
    """Exports the fine-tuning run model_dir into out (MODELS/<name>, next free version,
    or MODELS/<name>/<version>) as options say; returns {"path", "version", "metadata"}."""
    import numpy as np
    import tensorflow as tf

    import tfmicle
    from tfmicle.config import config_hash, to_dict
    from tfmicle.data.augment import CROP_PROPORTION, preprocess_eval
    from tfmicle.rundir import (load_classifier, read_best, resolve_checkpoint,
                                validation_for_step)
    from tfmicle.tasks import probabilities

    if not fileio.isdir(model_dir):   # a local folder or a URL (gs://, ram://)
        raise FileNotFoundError(f"model dir {model_dir} not found")
    base, version = resolve_out(out)
    kind, _ = resolve_checkpoint(model_dir, options.checkpoint)
    model, cfg, info, prefix = load_classifier(model_dir, options.checkpoint)
    task, class_names = info["task"], list(info["class_names"])
    size = cfg.data.image_size
    m = re.search(r"ckpt-(\d+)$", prefix)
    step = int(m.group(1)) if m else None
    best = read_best(model_dir)
    if kind == "best":
        step = best.get("step")
        validation = best.get("metrics")
    else:
        row = validation_for_step(model_dir, step)
        validation = {k: v for k, v in row.items() if k != "step"} if row else None
    calibration = None
    if options.calibrate:
        data_dir = info.get("data_dir") or cfg.data.dir
        calibration = fit_calibration(model, task, data_dir, options.calibrate,
                                      len(class_names), size)
    temperature = calibration["temperature"] if calibration else None
    module = build_module(model, task, size, temperature)
    metadata = {
        "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION,
        "task": task, "class_names": class_names, "num_classes": len(class_names),
        "image_size": size, "crop_proportion": CROP_PROPORTION, "embedding_dim":
            int(model.encoder.output_shape[-1]),
        "encoder": info.get("encoder", "resnet"),
        "config_hash": config_hash(cfg), "config": to_dict(cfg),
        "checkpoint": fileio.abspath(prefix), "checkpoint_kind": kind, "step": step,
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
                               "outputs": "as serving_default"},
            mf.EXPLAIN_SIGNATURE: {
                "inputs": {"images": "string [batch] encoded images",
                           "classes": "int32 [batch], -1 = the top class"},
                "outputs": {"probabilities": f"float32 [batch, {len(class_names)}]",
                            "heatmap": f"float32 [batch, {size}, {size}] Grad-CAM in [0, 1]",
                            "explained_class": "int32 [batch]",
                            "pixels": f"float32 [batch, {size}, {size}, 3] model input"}}},
        "calibration": calibration,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "tfmicle_version": tfmicle.__version__, "tensorflow_version": tf.__version__,
    }
    fileio.makedirs(base)
    final = fileio.join(base, str(version))
    staging = mf.staging_for(final)  # None: an object store, written in place
    if staging is None and fileio.exists(final):
        raise cli.UsageError(f"{final} appeared while exporting; not overwritten")
    tmp = staging or final
    try:
        tf.saved_model.save(module, tmp, signatures={
            mf.SIGNATURE: module.serve_images,
            mf.PIXELS_SIGNATURE: module.serve_pixels,
            mf.EXPLAIN_SIGNATURE: module.serve_explain})
        mf.write_labels(tmp, class_names)
        mf.write_metadata(tmp, metadata)
        write_card(tmp, model_card(model_dir, cfg, info, metadata, fileio.basename(base), version))
        if options.verify:
            probes = mf.probe_images()
            loaded = tf.saved_model.load(tmp)
            got = loaded.signatures[mf.SIGNATURE](**{mf.IMAGES_INPUT: tf.constant(probes)})
            pixels = tf.stack([preprocess_eval(tf.constant(p), size) for p in probes])
            t = tf.constant(1.0 if temperature is None else temperature, tf.float32)
            want = probabilities(task, model(pixels, training=False) / t).numpy()
            err = float(np.max(np.abs(got[mf.PROBABILITIES_OUTPUT].numpy() - want)))
            exp = loaded.signatures[mf.EXPLAIN_SIGNATURE](**{
                mf.IMAGES_INPUT: tf.constant(probes),
                mf.CLASSES_INPUT: tf.constant([-1] * len(probes), tf.int32)})
            err = max(err, float(np.max(np.abs(exp[mf.PROBABILITIES_OUTPUT].numpy() - want))))
            heat = exp[mf.HEATMAP_OUTPUT].numpy()
            if heat.shape != (len(probes), size, size) or not (
                    np.all(heat >= 0) and np.all(heat <= 1)):
                raise RuntimeError(f"{mf.EXPLAIN_SIGNATURE} returned a heatmap of shape "
                                   f"{heat.shape} or outside [0, 1]; not published")
            if not err <= 1e-4:
                raise RuntimeError(f"exported model disagrees with the Keras model "
                                   f"(max |diff| {err:.2e}); not published")
            log.info("verified: SavedModel and Keras model agree (max |diff| %.1e)", err)
        mf.publish(tmp)  # the publish marker: the last file written (model_format's rule)
        if staging is not None:
            if os.path.exists(final):
                raise cli.UsageError(f"{final} appeared while exporting; not overwritten")
            os.rename(staging, final)
        tmp = None
    finally:
        if tmp is not None:  # the staging folder, or what an unpublished try wrote in place
            fileio.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (%s checkpoint %s, step %s) to %s", model_dir, kind, prefix, step,
             final)
    return {"path": final, "version": version, "metadata": metadata}


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m tfmicle.export",
        description="Export a fine-tuning run as a versioned SavedModel (serving_default: "
                    "encoded images -> probabilities + embedding; serving_pixels: float "
                    "pixels; serving_explain: Grad-CAM heatmaps) with assets/labels.txt and "
                    "assets/metadata.json; --calibrate SPLIT bakes in temperature scaling.")
    p.add_argument("--model-dir", required=True,
                   help="fine-tuning run folder (model_dir), local or a URL")
    p.add_argument("--out", required=True,
                   help="MODELS/<name> (next free version) or MODELS/<name>/<version>; "
                        "a folder or a URL (gs://...)")
    p.add_argument("--checkpoint", default=ExportOptions.checkpoint,
                   help="auto (best if kept, else latest) | best | latest | a checkpoint "
                        "prefix (default: auto)")
    p.add_argument("--calibrate", metavar="SPLIT",
                   help="fit temperature scaling on this labelled split of the run's records "
                        "(e.g. valid) and bake it into the model")
    p.add_argument("--no-verify", action="store_true",
                   help="skip reloading the SavedModel and comparing it with the Keras model")
    return cli.add_output_flags(p, quiet=False)


def main(argv: list[str] | None = None) -> int:
    args = cli.start(build_parser(), argv)

    def body() -> int:
        fileio.check_url(args.model_dir, "--model-dir")
        fileio.check_url(args.out, "--out")
        try:
            result = export(args.model_dir, args.out, ExportOptions.from_args(args))
        except RuntimeError as e:  # the exported graph disagrees with the Keras model
            log.error("%s", e)
            return 1
        print(result["path"])
        return 0

    return cli.run("tfmicle.export", body)


if __name__ == "__main__":
    sys.exit(main())
