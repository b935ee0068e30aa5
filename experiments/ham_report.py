"""results.md / results.png of the HAM10000 experiments (ham_micle.py, ham_label_efficiency.py)."""
from __future__ import annotations

import numpy as np

from experiments import common
from experiments.ham10000 import CLASSES

LABELS = {"micle": "MICLe", "simclr": "SimCLR", "random_init": "random-init encoder",
          "colour_stats": "colour statistics", "chance": "chance", "scratch": "random init "
          "(supervised only)"}


def ci(pair) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _cost(result: dict) -> str:
    secs = [p[m]["seconds"] for r in result["per_seed"] for p in [r["pretraining"]]
            for m in p]
    steps = result["settings"]["steps"]
    b = result["settings"]["batch_size"]
    return (f"Pretraining cost: {len(secs)} runs of {steps} steps (batch {b}), "
            f"{np.mean(secs) / 60:.1f} min each ({min(secs):.0f}-{max(secs):.0f} s; "
            f"{steps * b / np.mean(secs):.0f} pairs/s) on {result['environment']['cpus']} "
            f"CPU cores; whole command {result['wall_seconds'] / 60:.1f} min.")


def _settings_changes(result: dict) -> list[str]:
    """The chosen HAM settings and the command's --set overrides (which win)."""
    changes = dict(result.get("chosen_settings") or {})
    for o in result["settings"].get("overrides") or []:
        k, _, v = o.partition("=")
        changes[k] = v
    return [f"{k}={v}" for k, v in changes.items()]


def markdown(result: dict) -> str:
    st, r, p = result["settings"], result["retrieval"], result["probe"]
    rec = result["records"]
    lines = [
        "# MICLe vs SimCLR on HAM10000 (multi-photo lesions)\n",
        f"ResNet-{st['depth']} width {st['width']:g} at {st['image_size']} px, "
        f"{st['steps']} pretraining steps of batch {st['batch_size']} per method and seed; "
        f"seeds {st['seeds']}; lesion split seed {st['split_seed']} (train "
        f"{rec['train']['cases']} lesions / {rec['train']['images']} photos, validation "
        f"{rec['validation']['cases']}, test {rec['test']['cases']} lesions / "
        f"{rec['test']['images']} photos). Settings: the derm preset with "
        f"{', '.join(_settings_changes(result)) or 'no change'}.\n",
        f"**Retrieval of distinct photos on test lesions**: {r['queries']} queries "
        f"(photos of {r['lesions']} test lesions with 2+ photos; {r['skipped_queries']} "
        f"queries whose other photos are all listed near-identical are skipped); listed "
        f"near-identical pairs are neither relevant nor candidates. Mean over seeds "
        f"(± std over seeds), 95 % CI by lesion bootstrap of the seed mean.\n"]
    rows = []
    for m in list(r["summary"]):
        s = r["summary"][m]
        per = r["per_seed"].get(m)
        sd = common.mean_std([x["map"] for x in per]) if per else None
        rows.append([LABELS[m], f"{s['map']:.3f}" + (f" ± {sd['std']:.3f}" if sd else ""),
                     ci(s["map_ci"]), f"{s['top1']:.3f}", ci(s["top1_ci"])])
    lines.append(common.markdown_table(["features", "mAP", "mAP 95 % CI", "top-1",
                                        "top-1 95 % CI"], rows))
    lines.append("\nPaired differences of mAP (same queries; CI by lesion bootstrap):\n")
    lines.append(common.markdown_table(
        ["difference", "mAP", "95 % CI"],
        [[k.replace("-", " − ").replace("random_init", "random init"), f"{v['map']:+.3f}",
          ci(v["map_ci"])] for k, v in r["diff"].items()]))
    lines.append("\n**Linear probe of the 7 diagnoses** (frozen features of train lesions, "
                 "class-balanced logistic regression, C chosen on validation lesions; test "
                 "lesions):\n")
    rows = []
    for m, s in p.items():
        rows.append([LABELS[m], f"{s['balanced_accuracy']['mean']:.3f} ± "
                     f"{s['balanced_accuracy']['std']:.3f}", ci(s["balanced_accuracy"]["ci"]),
                     f"{s['macro_auc']['mean']:.3f} ± {s['macro_auc']['std']:.3f}",
                     ci(s["macro_auc"]["ci"])])
    lines.append(common.markdown_table(["features", "balanced accuracy", "95 % CI",
                                        "macro AUC", "95 % CI"], rows))
    lines.append("\nPer-class recall of the probe (mean over seeds):\n")
    lines.append(common.markdown_table(
        ["features"] + list(CLASSES),
        [[LABELS[m]] + [f"{v:.2f}" for v in s["recall"]] for m, s in p.items()]))
    lines.append("\nPer seed (retrieval mAP; probe balanced accuracy / macro AUC; final "
                 "NT-Xent loss; mean cosine of distinct same-lesion photo pairs vs "
                 "other-lesion pairs):\n")
    rows = []
    for i, row in enumerate(result["per_seed"]):
        for m in ("micle", "simclr", "random_init"):
            pr = p[m]["per_seed"][i]
            ps = row["positive_similarity"][m]
            loss = row["pretraining"][m]["final_loss"] if m in row["pretraining"] else None
            rows.append([row["seed"], LABELS[m], f"{r['per_seed'][m][i]['map']:.3f}",
                         f"{pr['balanced_accuracy']:.3f} / {pr['macro_auc']:.3f}",
                         "" if loss is None else f"{loss:.3f}",
                         f"{ps['same_lesion']:.3f} vs {ps['other_lesion']:.3f}"])
    lines.append(common.markdown_table(["seed", "features", "mAP", "probe bal. acc / AUC",
                                        "final loss", "cosine same / other"], rows))
    lines.append("\n" + _cost(result) + "\n")
    lines.append(f"\nCommand: `{result['command']}`\n")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    r, p = result["retrieval"]["summary"], result["probe"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (title, names, val, lo_hi) in zip(axes, [
            ("retrieval mAP (distinct photos)", list(r),
             lambda m: r[m]["map"], lambda m: r[m]["map_ci"]),
            ("probe balanced accuracy", list(p),
             lambda m: p[m]["balanced_accuracy"]["mean"],
             lambda m: p[m]["balanced_accuracy"]["ci"]),
            ("probe macro AUC", list(p), lambda m: p[m]["macro_auc"]["mean"],
             lambda m: p[m]["macro_auc"]["ci"])]):
        v = np.array([val(m) for m in names])
        err = np.abs(np.array([lo_hi(m) for m in names]).T - v)
        ax.bar(range(len(names)), v, yerr=err, capsize=4, color="#2471a3")
        ax.set_xticks(range(len(names)), [LABELS[m] for m in names], rotation=25, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("HAM10000 test lesions (bars: seed mean, whiskers: 95 % lesion-bootstrap CI)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_markdown(result: dict) -> str:
    st = result["settings"]
    lines = ["# Derm pretraining settings on HAM10000 validation lesions\n",
             f"Each candidate pretrains MICLe and SimCLR (ResNet-{st['depth']} width "
             f"{st['width']:g}, {st['image_size']} px, {st['steps']} steps of batch "
             f"{st['batch_size']}, seeds {st['seeds']}, split seed {st['split_seed']}). "
             f"Score, declared before the search: {result['score']}. Test lesions are not "
             "read.\n"]
    rows = []
    for t in result["trials"]:
        s = t["retrieval"]["summary"]
        rows.append([t["name"], ", ".join(f"{k}={v}" for k, v in t["overrides"].items())
                     or "(PH2-chosen derm settings)", f"{s['micle']['map']:.3f}",
                     f"{s['simclr']['map']:.3f}", f"{s['random_init']['map']:.3f}",
                     ("**" if t["name"] == result["chosen"] else "") + f"{t['score']:.3f}"
                     + ("**" if t["name"] == result["chosen"] else "")])
    lines.append(common.markdown_table(["trial", "change", "MICLe mAP", "SimCLR mAP",
                                        "random-init mAP", "score"], rows))
    lines.append(f"\nChosen: **{result['chosen']}** {result['chosen_overrides']}. "
                 f"Whole search {result['wall_seconds'] / 60:.1f} min.\n")
    lines.append(f"\nCommand: `{result['command']}`\n")
    return "\n".join(lines)


def search_plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [t["name"] for t in result["trials"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    for k, (m, c) in enumerate((("micle", "#c0392b"), ("simclr", "#2471a3"),
                                ("random_init", "#7f8c8d"))):
        ax.bar(x + (k - 1) * 0.27, [t["retrieval"]["summary"][m]["map"]
                                    for t in result["trials"]], 0.27, label=LABELS[m],
               color=c)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("validation mAP")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
