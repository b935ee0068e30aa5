"""results.md / results.png of label_efficiency.py --dataset ham10000."""
from __future__ import annotations

import numpy as np

from experiments import common
from experiments.ham10000 import CLASSES

ARM_LABELS = {"micle": "MICLe-pretrained", "simclr": "SimCLR-pretrained",
              "scratch": "random init (supervised only)"}


def _ci(p) -> str:
    return f"[{p[0]:.3f}, {p[1]:.3f}]"


def _arm(key: str) -> str:
    init, f = key.split("/")
    return f"{ARM_LABELS[init]}, {float(f):.0%} labels"


def verdict(s: dict) -> list[str]:
    """Sentences from the numbers: does SSL + 10 % reach supervised + 100 %, and does
    MICLe add over SimCLR (a difference counts when its CI excludes 0)."""
    out = []
    for m, name in (("macro_auc", "macro AUC"), ("balanced_accuracy", "balanced accuracy")):
        for ssl in ("micle", "simclr"):
            d = s["diff"].get(f"{ssl}/0.1-scratch/1")
            if d:
                lo, hi = d[m]["ci"]
                word = ("is level with (the CI of the difference includes 0)"
                        if lo <= 0 <= hi else "exceeds" if lo > 0 else "does not reach")
                out.append(f"{ARM_LABELS[ssl]} + 10 % {word} supervised + 100 % on {name}: "
                           f"{d[m]['mean']:+.3f} {_ci(d[m]['ci'])}.")
        for f in ("0.1", "1"):
            d = s["diff"].get(f"micle/{f}-simclr/{f}")
            if d:
                lo, hi = d[m]["ci"]
                word = ("no difference beyond noise" if lo <= 0 <= hi else
                        "MICLe ahead" if lo > 0 else "SimCLR ahead")
                out.append(f"MICLe vs SimCLR at {float(f):.0%} labels, {name}: "
                           f"{d[m]['mean']:+.3f} {_ci(d[m]['ci'])} ({word}).")
    return out


def markdown(result: dict) -> str:
    st, s = result["settings"], result["summary"]
    rec = result["records"]
    lines = ["# Label efficiency on HAM10000\n",
             f"ResNet-{st['depth']} width {st['width']:g} at {st['image_size']} px, batch "
             f"{st['batch_size']}; fine-tuning budgets {st['finetune_steps'][0]} (10 %: "
             f"{result['labeled_images']['0.1']} images) and {st['finetune_steps'][1]} steps "
             f"(100 %: {result['labeled_images']['1']} images); seeds {st['seeds']}; test: "
             f"{rec['test']['cases']} lesions, {rec['test']['images']} photos. Mean ± std "
             "over seeds, 95 % CI by lesion bootstrap of the seed mean.\n"]
    rows = []
    for a, v in s["arms"].items():
        rows.append([_arm(a), f"{v['macro_auc']['mean']:.3f} ± {v['macro_auc']['std']:.3f}",
                     _ci(v["macro_auc"]["ci"]),
                     f"{v['balanced_accuracy']['mean']:.3f} ± "
                     f"{v['balanced_accuracy']['std']:.3f}", _ci(v["balanced_accuracy"]["ci"])])
    lines.append(common.markdown_table(["arm", "macro AUC", "95 % CI", "balanced accuracy",
                                        "95 % CI"], rows))
    lines.append("\n" + "\n".join(f"- {v}" for v in verdict(s)) + "\n")
    lines.append("\nPaired differences (test lesions resampled together):\n")
    lines.append(common.markdown_table(
        ["comparison", "macro AUC", "95 % CI", "balanced accuracy", "95 % CI"],
        [[f"{_arm(k.split('-')[0])} − {_arm(k.split('-')[1])}",
          f"{v['macro_auc']['mean']:+.3f}", _ci(v["macro_auc"]["ci"]),
          f"{v['balanced_accuracy']['mean']:+.3f}", _ci(v["balanced_accuracy"]["ci"])]
         for k, v in s["diff"].items()]))
    lines.append("\nPer-class recall on test lesions (mean over seeds):\n")
    lines.append(common.markdown_table(
        ["arm"] + list(CLASSES),
        [[_arm(a)] + [f"{x:.2f}" for x in v["recall"]] for a, v in s["arms"].items()]))
    lines.append("\nSettings chosen on validation lesions (seed "
                 f"{st['seeds'][0]}; score = mean of validation macro AUC and balanced "
                 "accuracy of the kept checkpoint); every run tried, rejected ones too:\n")
    rows = [[_arm(f"{r['init']}/{r['fraction']:g}"), r["learning_rate"], r["class_weight"],
             f"{r['val_macro_auc']:.3f}", f"{r['val_balanced_accuracy']:.3f}",
             f"{r['score']:.3f}", f"{r['best']['step']} / {r['steps']}",
             f"{r['seconds']:.0f}"] for r in result["grid"]]
    lines.append(common.markdown_table(["arm", "LR", "class weight", "val macro AUC",
                                        "val bal. acc", "score", "best step / budget",
                                        "seconds"], rows))
    lines.append("\nChosen: " + "; ".join(f"{_arm(k)}: LR {v['learning_rate']:g}, class "
                                          f"weight {v['class_weight']}"
                                          for k, v in result["chosen"].items()) + ".\n")
    secs = [r["seconds"] for r in result["finals"]]
    lines.append(f"\nCost: {len(result['grid'])} validation runs and {len(secs)} final runs "
                 f"({np.mean(secs):.0f} s each on average) on "
                 f"{result['environment']['cpus']} CPU cores; whole command "
                 f"{result['wall_seconds'] / 60:.1f} min"
                 + (f" (pretraining reused from {st['pretrained']})" if st["pretrained"]
                    else "") + ".\n")
    lines.append(f"\nCommand: `{result['command']}`\n")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = result["summary"]["arms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"micle": "#c0392b", "simclr": "#2471a3", "scratch": "#7f8c8d"}
    for ax, m, title in ((axes[0], "macro_auc", "test macro AUC"),
                         (axes[1], "balanced_accuracy", "test balanced accuracy")):
        for k, init in enumerate(("micle", "simclr", "scratch")):
            xs, ys, err = [], [], []
            for j, f in enumerate(("0.1", "1")):
                v = s.get(f"{init}/{f}")
                if v:
                    xs.append(j + (k - 1) * 0.25)
                    ys.append(v[m]["mean"])
                    err.append([v[m]["mean"] - v[m]["ci"][0], v[m]["ci"][1] - v[m]["mean"]])
            ax.bar(xs, ys, 0.25, yerr=np.array(err).T, capsize=3, color=colours[init],
                   label=ARM_LABELS[init])
        ax.set_xticks([0, 1], ["10 % labels", "100 % labels"])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
