"""`python -m tfmicle.demo --ham10000 DIR`: the product flow on a real multi-photo
dermatology download (HAM10000 in its official layout), through the same CLIs a user
runs: data_prep --format ham10000 -> MICLe pretraining on the train lesions (labels
unused) -> what pretraining bought (retrieval of distinct photos of held-out lesions and
a linear probe of the 7 diagnoses, MICLe encoder vs a random-init one) -> 7-class
fine-tuning (balanced class weights) -> export calibrated on validation lesions ->
score on test lesions with subgroups (sex, age band, site) and explanations -> the
command that serves the model and a sample request.

HAM10000 is non-commercial (CC BY-NC): the demo reads it from DIR and writes records,
models and reports under --out only.
"""
from __future__ import annotations

import json
import math
import os
import shutil

from tfmicle.demo_steps import last_logged, pick, serve_lines, stage, write_yaml

SPLITS = "train=0.7,validation=0.1,test=0.2"
SUBGROUPS = "sex,age_band,localization"
IMAGE_SIZE = 64
BATCH = 64
# Experiment 1's encoder and pretraining recipe on HAM10000 (experiments/README.md).
PRETRAIN = {"optimizer": "lars", "learning_rate": 0.0375, "lr_scaling": "sqrt",
            "weight_decay": 1e-6, "temperature": 0.2}
PRETRAIN_COLOUR = {"color_p": 0.8, "color_strength": 0.2}   # chosen on HAM validation lesions


def pretraining_bought(records: str, pre_cfg_path: str, seed: int = 0) -> dict:
    """On the test lesions: same-lesion retrieval of distinct photos (near-identical
    pairs of the records left out; queries = photos of lesions with 2+ photos) and a
    linear probe of the diagnoses (train features, C chosen on validation), for the
    MICLe encoder and a random-init encoder of the same architecture."""
    import numpy as np

    from tfmicle.config import load_config
    from tfmicle.data import records as rec
    from tfmicle.data.pipeline import PipelineConfig, evaluation
    from tfmicle.probe import linear_probe
    from tfmicle.retrieval import centred, chance_metrics, features_of, retrieval_metrics
    from tfmicle.rundir import load_encoder

    cfg = load_config(pre_cfg_path)
    info = rec.load_dataset_info(records)
    k = len(info["class_names"])
    data = {s: evaluation(PipelineConfig(records, s, batch_size=256,
                                         image_size=cfg.data.image_size))
            for s in ("train", "validation", "test")}
    meta = {s: features_of(None, d, want=("image_id", "case_id", "label_class"))[1]
            for s, d in data.items()}
    test = meta["test"]
    key = [(c, i) for c, i in zip(test["case_id"], test["image_id"])]
    index = {x: n for n, x in enumerate(key)}
    exclude = np.zeros((len(key), len(key)), bool)
    for c in rec.iter_cases(records, "test"):
        for a, b in c.near_pairs:
            ia = index[(c.case_id.encode(), c.image_ids[a].encode())]
            ib = index[(c.case_id.encode(), c.image_ids[b].encode())]
            exclude[ia, ib] = exclude[ib, ia] = True
    lesions = np.array(test["case_id"])
    ids, counts = np.unique(lesions, return_counts=True)
    multi = set(ids[counts >= 2].tolist())
    queries = [n for n, c in enumerate(lesions) if c in multi]
    out = {"test_lesions": int(len(ids)), "multi_photo_lesions": len(multi),
           "queries": len(queries), "chance": chance_metrics(lesions, queries, exclude)}
    for name, ckpt in (("micle", cfg.model_dir), ("random_init", None)):
        enc = load_encoder(cfg, ckpt, seed)
        f = {s: features_of(enc, d, want=())[0] for s, d in data.items()}
        out[name] = retrieval_metrics(centred(f["test"]), lesions, queries, exclude)
        probe = linear_probe(*[(f[s], meta[s]["label_class"].astype(int))
                               for s in ("train", "validation", "test")], k,
                             replicates=200, test_lesions=lesions)
        out[name]["probe"] = {m: probe[m] for m in ("balanced_accuracy", "macro_auc",
                                                   "balanced_accuracy_ci", "macro_auc_ci")}
    return out


def bought_lines(r: dict) -> str:
    lines = [f"What pretraining bought, on {r['test_lesions']} held-out test lesions:",
             f"  retrieval of distinct photos ({r['queries']} photos of "
             f"{r['multi_photo_lesions']} multi-photo lesions; near-identical pairs left out)",
             "  linear probe of the diagnoses (frozen features, 95 % CI over lesions)",
             f"  {'encoder':18s} {'top-1':>6s} {'mAP':>6s}   {'probe bal. acc':>22s}"
             f"   {'probe macro AUC':>22s}"]
    for name, label in (("micle", "MICLe-pretrained"), ("random_init", "random-init")):
        v, p = r[name], r[name]["probe"]
        lines.append(
            f"  {label:18s} {v['top1']:6.3f} {v['map']:6.3f}   {p['balanced_accuracy']:.3f} "
            f"[{p['balanced_accuracy_ci'][0]:.3f}, {p['balanced_accuracy_ci'][1]:.3f}]   "
            f"{p['macro_auc']:.3f} [{p['macro_auc_ci'][0]:.3f}, {p['macro_auc_ci'][1]:.3f}]")
    c = r["chance"]
    lines.append(f"  {'chance':18s} {c['top1']:6.3f} {c['map']:6.3f}")
    return "\n".join(lines)


def run(data: str, out: str, pretrain_steps: int, finetune_steps: int, width: float,
        quiet: bool) -> dict:
    out = os.path.abspath(out)
    records = os.path.join(out, "records")
    pre_dir = os.path.join(out, "runs", "micle")
    ft_dir = os.path.join(out, "runs", "finetune")
    models = os.path.join(out, "models", "ham10000")
    report = os.path.join(out, "score")
    for d in (records, pre_dir, ft_dir, models, report):
        shutil.rmtree(d, ignore_errors=True)
    q = ["--no-progress"] if quiet else []
    qa = ["-q"] if quiet else []
    stage("data_prep (HAM10000, split by lesion)", "data_prep", [
        "--format", "ham10000", "--input", data, "--out", records, "--split-fractions", SPLITS,
        "--label-fractions", "0.1,1", "--overwrite", *q])
    from tfmicle.data.pipeline import count_examples
    model = {"depth": 18, "width_multiplier": width, "num_proj_layers": 2, "proj_out_dim": 64,
             "global_bn": False}
    pre_cfg = write_yaml(os.path.join(out, "pretrain.yaml"), {
        "mode": "pretrain", "method": "micle", "model_dir": pre_dir,
        "data": {"dir": records, "train_split": "train", "image_size": IMAGE_SIZE,
                 "augment": "derm", **PRETRAIN_COLOUR, "shuffle_buffer": 10_000,
                 "cache": True},
        "model": {**model, "online_probe": False},
        "train": {"batch_size": BATCH, "train_steps": pretrain_steps,
                  "warmup_epochs": 0.1 * pretrain_steps * BATCH
                  / count_examples(records, "train", "case"), **PRETRAIN,
                  "checkpoint_steps": max(pretrain_steps // 2, 1),
                  "log_steps": max(pretrain_steps // 8, 1)}})
    stage("MICLe pretraining (train lesions, labels unused)", "tfmicle.train",
           ["--config", pre_cfg, *qa])
    print("\n=== what pretraining bought (test lesions) ===", flush=True)
    bought = pretraining_bought(records, pre_cfg)
    print(bought_lines(bought), flush=True)
    ft_cfg = write_yaml(os.path.join(out, "finetune.yaml"), {
        "mode": "finetune", "model_dir": ft_dir,
        "data": {"dir": records, "train_split": "train", "eval_split": "validation",
                 "image_size": IMAGE_SIZE, "augment": "derm", "crop_min_area": 0.5,
                 "shuffle_buffer": 10_000, "cache": True},
        "model": model,
        "train": {"batch_size": BATCH, "train_steps": finetune_steps, "warmup_epochs": 0,
                  "optimizer": "momentum", "learning_rate": 0.03, "lr_scaling": "none",
                  "weight_decay": 0.0, "checkpoint_steps": max(finetune_steps // 3, 1),
                  "log_steps": max(finetune_steps // 3, 1)},
        "finetune": {"init": "checkpoint", "checkpoint": pre_dir, "fine_tune_after_block": -1,
                     "zero_init_head": True, "class_weight": "balanced",
                     "best_metric": "val_auc",
                     "eval_every_steps": max(finetune_steps // 3, 1)}})
    stage("7-class fine-tuning (balanced class weights)", "tfmicle.train",
           ["--config", ft_cfg, *qa])
    stage("export (calibrated on the validation lesions)", "tfmicle.export",
           ["--model-dir", ft_dir, "--out", models, "--calibrate", "validation"])
    # The training lesions as the reference archive of similar cases, inside the version
    # folder so the server finds and hot-reloads it with its model.
    from tfmicle.model_format import resolve_version
    index = os.path.join(resolve_version(models)[0], "similar")
    stage("similar-case index (training lesions)", "tfmicle.index", [
        "--model", models, "--data", records, "--split", "train", "--out", index,
        "--meta-cols", "localization", *qa])
    stage("batch scoring (test lesions, subgroups, explanations, similar cases)",
          "tfmicle.score", [
              "--model", models, "--data", records, "--split", "test", "--out", report,
              "--bootstrap", "200", "--explain", "2", "--subgroups", SUBGROUPS,
              "--model-card", "--similar", index, *qa])
    sample = write_sample(records, out)
    metrics_path = os.path.join(report, "metrics.json")
    metrics = json.load(open(metrics_path)) if os.path.exists(metrics_path) else {}
    return {"out": out, "records": records, "pretrain_dir": pre_dir, "finetune_dir": ft_dir,
            "models": models, "report": report, "metrics": metrics, "sample": sample,
            "index": index,
            "pretraining": {"final_contrast_loss": last_logged(pre_dir, "epoch_contrast_loss"),
                            "batch_size": BATCH,
                            "uniform_guess_loss": 2 * math.log(2 * BATCH - 1)},
            "bought": bought}


def write_sample(records: str, out: str) -> str:
    """The first test photo as a JPEG file, for the sample request."""
    from tfmicle.data import records as rec
    case = next(rec.iter_cases(records, "test"))
    path = os.path.join(out, "sample.jpg")
    with open(path, "wb") as f:
        f.write(case.images[0])
    return path


def summary(res: dict, port: int) -> str:
    m = res["metrics"]
    lines = ["", "tfmicle demo on HAM10000 done. Where everything is:",
             f"  records         {res['records']}",
             f"  MICLe run       {res['pretrain_dir']}",
             f"  fine-tuned run  {res['finetune_dir']}",
             f"  SavedModel      {res['models']}",
             f"  score report    {os.path.join(res['report'], 'report.md')} (subgroups: "
             f"{SUBGROUPS})",
             f"  model card      {os.path.join(res['report'], 'model_card.md')}",
             f"  case index      {res['index']} (training lesions, served with the model)",
             ""]
    pt = res["pretraining"]
    if pt["final_contrast_loss"] is not None:
        lines.append(f"MICLe pretraining: last logged contrastive loss "
                     f"{pt['final_contrast_loss']:.2f} (uniform guess: "
                     f"{pt['uniform_guess_loss']:.2f})")
    lines += [bought_lines(res["bought"]), "",
              "Fine-tuned 7-class classifier on the held-out test lesions:"]
    for name, keys in (("image macro AUC", ("image.mean_auc", "mean_auc")),
                       ("image balanced accuracy", ("image.balanced_accuracy",)),
                       ("image top-1 accuracy", ("image.top1_accuracy",)),
                       ("case top-1 accuracy", ("case.top1_accuracy",))):
        v = pick(m, *keys)
        if v is not None:
            lines.append(f"  {name:24s} {v:.3f}")
    sim = m.get("similar_cases")
    if sim:
        lines.append(f"  similar cases: precision@{sim['k']} {sim['precision_at_k']:.3f} "
                     f"(chance {sim['chance']:.3f}; mean over classes "
                     f"{sim['precision_at_k_macro']:.3f}, chance {sim['chance_macro']:.3f})")
    lines += serve_lines(res["models"], res["sample"], port)
    lines.append(f"  curl -F files=@{res['sample']} 'http://127.0.0.1:{port}/classify?similar=5'"
                 "   # and the 5 most similar training lesions")
    return "\n".join(lines)
