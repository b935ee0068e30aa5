"""The model card of an export (``build_card``): from metadata.json's facts, the records'
dataset.json, the run's finetune.json and its pretraining history. Field names: Model
Card Toolkit v0.0.2 (tfmicle/model_card/__init__.py)."""
from __future__ import annotations

import math

from tfmicle import fileio

CARD_VERSION = 1
SCHEMA = "Model Card Toolkit v0.0.2 field names"
TO_COMPLETE = "TO BE COMPLETED BY THE DEPLOYER"
REFERENCES = {  # the methods a card's model comes from, cited by the card
    "simclr": "SimCLR: Chen et al., A Simple Framework for Contrastive Learning of Visual "
              "Representations, ICML 2020 (arXiv:2002.05709)",
    "simclrv2": "SimCLRv2: Chen et al., Big Self-Supervised Models are Strong Semi-Supervised "
                "Learners, NeurIPS 2020 (arXiv:2006.10029)",
    "micle": "MICLe: Azizi et al., Big Self-Supervised Models Advance Medical Image "
             "Classification, ICCV 2021 (arXiv:2101.05224)",
}
SUBGROUPS_UNKNOWN = "Subgroup performance is unknown"
METHOD_NAMES = {"simclr": "SimCLR", "micle": "MICLe"}


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def metric(type_: str, value, slice_: str, ci=None) -> dict:
    """One performance_metrics entry; confidence_interval None when there is none."""
    ok = ci is not None and len(ci) == 2 and all(_num(c) is not None for c in ci)
    return {"type": type_, "value": _num(value), "slice": slice_,
            "confidence_interval": {"lower_bound": float(ci[0]), "upper_bound": float(ci[1])}
            if ok else None}


# --------------------------------------------------------------------------- export

def _split_counts(dataset: dict | None) -> dict:
    """{split: {"cases", "images", "patients", "label_counts"}} as dataset.json has them."""
    keep = ("cases", "images", "patients", "label_counts", "unlabeled_cases")
    return {s: {k: v[k] for k in keep if k in v}
            for s, v in ((dataset or {}).get("splits") or {}).items()}


def _pretraining_text(history: list[dict], init: str) -> str:
    if init == "imagenet":
        return "ImageNet-pretrained weights (supervised, keras.applications); no self-supervised step"
    if init == "scratch":
        return "random initialisation; no pretraining"
    if not history:
        return "a checkpoint whose pretraining run could not be found"
    parts = []
    for h in history:
        if not h.get("readable"):
            parts.append(f"an unreadable run ({h['path']}: its history is unknown)")
        elif h.get("imported"):
            parts.append(f"SimCLRv2 weights imported from {h['imported'].get('source')} "
                         f"(step {h['imported'].get('global_step')})")
        else:
            data = h.get("tfds") or h.get("data_dir") or "?"
            parts.append(f"{METHOD_NAMES.get(h['method'], h['method'])} pretraining for {h.get('steps')} steps "
                         f"(batch {h.get('batch_size')}) on {data} split {h.get('train_split')}")
    return ", continued from ".join(parts)


def build_card(metadata: dict, name: str, version: int, dataset: dict | None,
               run: dict, history: list[dict]) -> dict:
    """The card of an export. metadata: what export writes to metadata.json; dataset: the
    records' dataset.json (None when unreadable); run: the run's finetune.json; history:
    rundir.pretraining_history of its checkpoint ([] unless init is checkpoint)."""
    cfg = metadata.get("config") or {}
    model, ft, train = cfg.get("model") or {}, cfg.get("finetune") or {}, cfg.get("train") or {}
    tr = metadata.get("train") or {}
    task, classes = metadata.get("task"), list(metadata.get("class_names") or [])
    init = tr.get("init") or ft.get("init") or "unknown"
    pretraining = _pretraining_text(history, init)
    methods = {h.get("method") for h in history if h.get("readable") and not h.get("imported")}
    refs = [REFERENCES[m] for m in ("simclr", "micle") if m in methods]
    refs += [REFERENCES["simclrv2"]] if any(h.get("imported") for h in history) else []
    calibrated = metadata.get("calibration")
    if metadata.get("encoder", "resnet") == "resnet":
        arch = (f"ResNet-{model.get('depth')} (width x{model.get('width_multiplier')}, "
                f"SK ratio {model.get('sk_ratio')}) encoder")
    else:
        arch = f"{metadata.get('encoder')} encoder"
    arch += (f", {metadata.get('embedding_dim')}-d embedding, linear head over "
             f"{len(classes)} classes ({task}); input {metadata.get('image_size')} px")

    splits = _split_counts(dataset)
    eval_split = tr.get("eval_split")
    data_dir = tr.get("data_dir")
    perf, val = [], metadata.get("validation") or {}
    for key, value in val.items():
        if "top3" in key and len(classes) <= 3:  # always 1 with three classes or fewer
            continue
        level = "case" if "_case_" in key else "image"
        perf.append(metric(key, value, f"validation split '{eval_split}', {level} level"))
    cal_block = None
    if calibrated:
        for when in ("before", "after"):
            perf.append(metric("ece", calibrated[when]["ece"],
                               f"calibration split '{calibrated['split']}', image level, "
                               f"{when} temperature scaling"))
        cal_block = {k: calibrated.get(k) for k in ("method", "split", "num_images",
                                                    "temperature", "before", "after")}
    columns = list((dataset or {}).get("metadata_columns") or [])
    if columns:
        subgroups = (f"{SUBGROUPS_UNKNOWN}: not evaluated at export. The records have "
                     f"metadata columns ({', '.join(columns)}); `python -m tfmicle.score "
                     f"--subgroups ... --model-card` measures it on held-out data.")
    else:
        subgroups = (f"{SUBGROUPS_UNKNOWN}: the training records have no subgroup metadata "
                     "(sex, age, site, device...), so no performance per patient group was "
                     "measured, and the groups the data covers are not known.")
    limitations = [
        subgroups,
        "Validation metrics are point estimates (no confidence interval) on the split that "
        "also chose the checkpoint, so they are optimistic; held-out performance with CIs "
        "comes from `python -m tfmicle.score --model-card`." if val else
        "No validation metrics were recorded for the exported checkpoint.",
        f"Trained on {_dataset_name(dataset, data_dir)} only: performance on other sites, "
        "devices, populations or acquisition protocols is unknown (dataset shift).",
        "Outputs are per-class probabilities for the trained classes only; an image of any "
        "other kind still gets a probability over these classes.",
    ]
    if calibrated and calibrated.get("split") == eval_split:
        limitations.append("Temperature scaling was fitted on the validation split, which also "
                           "chose the checkpoint.")
    if not calibrated:
        limitations.append("Probabilities are not calibrated (exported without --calibrate).")
    if dataset is None:
        limitations.append(f"The records' dataset.json ({data_dir}) could not be read: "
                           "counts per split and class, sources and duplicates are unknown.")
    if any(not h.get("readable") for h in history):
        limitations.append("Part of the pretraining history could not be read.")
    return {
        "schema": SCHEMA, "card_version": CARD_VERSION,
        "model_details": {
            "name": name,
            "overview": (f"A {task} image classifier over {len(classes)} classes "
                         f"({', '.join(classes)}), fine-tuned with tfmicle from {pretraining}. "
                         "It takes encoded images and returns per-class probabilities"
                         f"{' (temperature-scaled)' if calibrated else ''} and an embedding."),
            "version": {"name": str(version), "date": metadata.get("exported_at"), "diff": ""},
            "owners": [{"name": TO_COMPLETE, "contact": TO_COMPLETE}],
            "licenses": [{"custom_text": TO_COMPLETE}],
            "references": [{"reference": r} for r in refs]},
        "model_parameters": {
            "model_architecture": arch,
            "data": {"train": {"name": _dataset_name(dataset, data_dir), "link": data_dir,
                               "sensitive": {"sensitive_data": columns},
                               "description": f"split '{tr.get('train_split')}', label "
                                              f"fraction {tr.get('label_fraction')}: "
                                              f"{tr.get('train_cases')} cases, "
                                              f"{tr.get('train_images')} images"},
                     "eval": {"name": _dataset_name(dataset, data_dir), "link": data_dir,
                              "sensitive": {"sensitive_data": columns},
                              "description": f"split '{eval_split}' (validation)"}},
            "input_format": "serving_default: `images`, a 1-D string tensor of encoded images "
                            "(JPEG, PNG, BMP, GIF); centre crop and resize happen in the graph",
            "output_format": f"`probabilities` float32 [batch, {len(classes)}] in the order of "
                             "assets/labels.txt; `embedding` float32 [batch, "
                             f"{metadata.get('embedding_dim')}]"},
        "quantitative_analysis": {
            "performance_metrics": perf,
            "graphics": {"description": "none in the card; `python -m tfmicle.score` draws "
                                        "ROC, PR and reliability plots", "collection": []}},
        "considerations": {
            "users": [{"description": TO_COMPLETE}],
            "use_cases": [{"description": f"Intended use: {TO_COMPLETE}. Not validated for "
                                          "clinical decisions without a local evaluation."}],
            "limitations": [{"description": t} for t in limitations],
            "tradeoffs": [{"description": "Case-level metrics average the probabilities of "
                                          "a case's images; image-level ones count each "
                                          "image once."}],
            "ethical_considerations": [{"name": "Subgroup fairness (see the limitations): who "
                                                "the model may serve worse",
                                        "mitigation_strategy": TO_COMPLETE}]},
        "tfmicle": {
            "training_data": {
                "data_dir": data_dir, "task": task, "class_names": classes,
                "source": (dataset or {}).get("source"), "splits": splits,
                "train_split": tr.get("train_split"), "eval_split": eval_split,
                "label_fraction": tr.get("label_fraction"), "train_cases": tr.get("train_cases"),
                "train_images": tr.get("train_images"),
                "train_images_per_class": run.get("train_images_per_class"),
                "metadata_columns": columns if dataset is not None else None,
                "duplicates": (dataset or {}).get("duplicates"),
                "near_duplicates": (dataset or {}).get("near_duplicates"),
                "skipped_reasons": (dataset or {}).get("skipped_reasons")},
            "finetuning": {
                "init": init, "checkpoint": run.get("checkpoint") or ft.get("checkpoint") or None,
                "fine_tune_after_block": ft.get("fine_tune_after_block"),
                "steps": train.get("train_steps"), "batch_size": train.get("batch_size"),
                "optimizer": train.get("optimizer"), "learning_rate": train.get("learning_rate"),
                "class_weight": ft.get("class_weight"), "best_metric": metadata.get("best_metric"),
                "checkpoint_kind": metadata.get("checkpoint_kind"), "step": metadata.get("step"),
                "config_hash": metadata.get("config_hash")},
            "pretraining": {"summary": pretraining, "runs": history},
            "validation": {"split": eval_split, "step": metadata.get("step"), "metrics": val,
                           "confidence_intervals": None,
                           "note": "point estimates: validation records no CIs"},
            "calibration": cal_block,
            "subgroups": {"evaluated": False, "statement": subgroups},
            "heldout": None, "shift": None}}


def _dataset_name(dataset: dict | None, data_dir: str | None) -> str:
    src = (dataset or {}).get("source") or {}
    where = src.get("input") or data_dir or "unknown data"
    return f"{fileio.basename(fileio.normpath(str(where)))} ({src.get('format') or 'records'})"
