"""Experiment 2's report: the summary over seeds, the plain answer to "does SimCLR +
few labels reach scratch + all labels?", results.md and results.png."""
from __future__ import annotations

import math

import numpy as np

from experiments import common

INITS = ("simclr", "scratch")
LABELS = {"simclr": "SimCLR-pretrained", "scratch": "from scratch"}


def summarise(rows: list[dict], fractions) -> dict:
    out = {}
    for init in INITS:
        out[init] = {}
        for f in fractions:
            sel = sorted((r for r in rows if r["init"] == init and r["fraction"] == f),
                         key=lambda r: r["seed"])
            out[init][f"{f:g}"] = {
                "test_accuracy": common.mean_std([r["test_accuracy"] for r in sel]),
                "validation_accuracy": common.mean_std([r["best_validation"]["value"]
                                                        for r in sel]),
                "labeled_images": sel[0]["labeled_images"] if sel else 0,
                "steps": sel[0]["budget_steps"] if sel else 0,
                "epochs": sel[0]["epochs"] if sel else 0.0,
                "learning_rate": sel[0]["learning_rate"] if sel else None,
                "best_steps": [r["best_validation"]["step"] for r in sel],
                "seeds": [r["seed"] for r in sel]}
    return out


def verdict(summary: dict, fractions) -> dict:
    """Does SimCLR with the smallest label fraction (10 % by default) reach scratch with
    the largest (100 %)? Compares means; says whether the difference exceeds the larger
    of the two standard deviations (seed spread)."""
    lo, hi = min(fractions), max(fractions)
    a = summary["simclr"][f"{lo:g}"]
    b = summary["scratch"][f"{hi:g}"]
    sa, sb = a["test_accuracy"], b["test_accuracy"]
    diff = sa["mean"] - sb["mean"]
    reaches = bool(diff >= 0)
    n = min(sa["n"], sb["n"])
    spread = max(sa["std"], sb["std"]) if n > 1 else math.nan
    beyond = bool(n > 1 and abs(diff) > spread)
    left = f"SimCLR + {lo:.0%} labels ({a['labeled_images']:,} images)"
    right = f"scratch + {hi:.0%} labels ({b['labeled_images']:,} images)"
    nums = (f"test accuracy {common.fmt_pm(sa, 4)} vs {common.fmt_pm(sb, 4)}, "
            f"difference {diff:+.4f}")
    if n <= 1:
        text = (f"{'Yes' if reaches else 'No'}, on one seed only: {left} "
                f"{'reaches' if reaches else 'does not reach'} {right} ({nums}); with one "
                f"seed no spread is measured, so this says nothing about significance.")
    elif beyond:
        verb = "reaches" if reaches else "does not reach"
        text = (f"{'Yes' if reaches else 'No'}: {left} {verb} "
                f"{right} ({nums}, mean ± std over {n} seeds); the difference is larger than "
                f"both standard deviations (the larger is {spread:.4f}).")
    else:
        text = (f"{'Yes' if reaches else 'No'} on average, but not clearly: {left} "
                f"{'reaches' if reaches else 'falls short of'} {right} on the mean ({nums}, "
                f"mean ± std over {n} seeds), and the difference is within the seed spread "
                f"(standard deviation up to {spread:.4f}).")
    return {"simclr_fraction": lo, "scratch_fraction": hi, "simclr": sa, "scratch": sb,
            "difference": diff, "reaches": reaches, "seeds": n, "max_std": spread,
            "difference_exceeds_std": beyond, "text": text}


def run_name(r: dict) -> str:
    return (f"seed {r['seed']}, {LABELS[r['init']]}, {r['fraction']:.0%} labels, "
            f"LR {r['learning_rate']:g}")


def markdown(result: dict) -> str:
    s, st, d = result["summary"], result["settings"], result["data"]
    fr = st["fractions"]
    n_seeds = len(st["seeds"])
    spread = (f"mean ± std (ddof 1) over {n_seeds} seeds {st['seeds']}" if n_seeds > 1
              else f"one seed ({st['seeds'][0]}): no spread measured")
    pre = result["pretraining"]
    pre_text = (f"one SimCLR pretraining run (seed {pre[0]['seed']}) shared by every seed: "
                f"the seeds vary the fine-tuning only (head initialisation, data order, "
                f"augmentation)" if not st["pretrain_per_seed"]
                else "one SimCLR pretraining run per seed")
    grid = ", ".join(f"{x:g}" for x in st["lr_grid"])
    lines = [
        "# Label efficiency on Fashion-MNIST\n",
        f"**Scale** (chosen to fit 2 CPU cores): the labels come from a *labeled pool* of "
        f"{d['train_images']:,} training images (class-stratified, seed 0); the label "
        f"fractions are fractions of this pool (data_prep's nested, class-stratified "
        f"subsets). SimCLR pretraining uses all {d['unlabeled_images']:,} training images "
        f"without labels ({st['pretrain_steps']} steps of batch {st['batch_size']}; "
        f"{pre_text}). Validation: {d['validation_images']:,} training images carved out "
        f"(class-stratified, disjoint from the pool), the only split used for a choice. "
        f"Test: {d['test_images']:,} t10k images, scored once per final run. "
        f"ResNet-{st['depth']} width {st['width']:g} at {st['image_size']} px, every layer "
        f"fine-tuned, batch {st['batch_size']}. Wall time "
        f"{result['wall_seconds'] / 60:.1f} min.\n",
        "## Does SimCLR + few labels reach scratch + all labels?\n",
        result["verdict"]["text"] + "\n",
        f"## Test accuracy ({spread})\n"]
    header = ["initialisation"] + [
        f"{f:.0%} labels ({s['scratch'][f'{f:g}']['labeled_images']:,} images)" for f in fr]
    rows = [[LABELS[i]] + [common.fmt_pm(s[i][f"{f:g}"]["test_accuracy"], 4) for f in fr]
            for i in INITS]
    rows.append(["difference (SimCLR − scratch)"] + [
        f"{s['simclr'][f'{f:g}']['test_accuracy']['mean'] - s['scratch'][f'{f:g}']['test_accuracy']['mean']:+.4f}"
        for f in fr])
    lines.append(common.markdown_table(header, rows))
    lines.append(
        "\n## Model selection (validation split only)\n\n"
        f"Both initialisations get the same care. Training length: each run trains for a "
        f"fixed budget per fraction ("
        + ", ".join(f"{f:.0%}: {n} steps = {s['scratch'][f'{f:g}']['epochs']:.1f} epochs"
                    for f, n in zip(fr, st["finetune_steps"]))
        + f"; {st['validations']} validations, cosine decay over the budget) and the "
        f"checkpoint kept is the one with the best validation accuracy. Learning rate: "
        f"grid {{{grid}}} on seed {st['seeds'][0]}, separately for each initialisation and "
        f"fraction; the LR with the best validation accuracy is used for every seed.\n")
    rows = []
    for r in result["grid"]:
        b = r["best_validation"]
        rows.append([LABELS[r["init"]], f"{r['fraction']:.0%}", f"{r['learning_rate']:g}",
                     f"{b['value']:.4f}", f"{b['step']} / {r['steps']}",
                     "**chosen**" if r.get("chosen") else "rejected"])
    lines.append(common.markdown_table(
        ["initialisation", "labels", "LR", "best validation accuracy", "at step / steps",
         "choice"], rows))
    lines.append("\nValidation accuracy of the kept checkpoints (chosen LR, every seed):\n")
    rows = [[LABELS[i]] + [common.fmt_pm(s[i][f"{f:g}"]["validation_accuracy"], 4)
                           for f in fr] for i in INITS]
    lines.append(common.markdown_table(["initialisation"] + [f"{f:.0%}" for f in fr], rows))
    lines.append("\n## Per-seed runs\n")
    rows = []
    for r in sorted(result["runs"], key=lambda r: (r["fraction"], r["init"] != "simclr",
                                                   r["seed"])):
        b = r["best_validation"]
        rows.append([r["seed"], LABELS[r["init"]], f"{r['fraction']:.0%}",
                     f"{r['learning_rate']:g}", f"{b['value']:.4f}",
                     f"{b['step']} / {r['steps']}", f"{r['test_accuracy']:.4f}"])
    lines.append(common.markdown_table(
        ["seed", "initialisation", "labels", "LR", "best validation accuracy",
         "at step / steps", "test accuracy"], rows))
    flagged = result["not_converged"]
    n_all = len(result["grid"]) + len(result["runs"]) - sum(
        1 for r in result["grid"] if r.get("chosen"))
    if flagged:
        lines.append(f"\n**Possibly not converged**: {len(flagged)} of the {n_all} runs had "
                     f"their best validation accuracy at their last validation (a longer "
                     f"budget might have helped them): " + "; ".join(flagged) + ".\n")
    else:
        lines.append(f"\nNone of the {n_all} runs had its best validation accuracy at its "
                     f"last validation.\n")
    lines.append("\nPretraining: " + "; ".join(
        f"seed {r['seed']}: {r['steps']} steps, final loss {r['final_loss']:.3f}, "
        f"{r['seconds'] / 60:.1f} min" for r in pre) + ".\n")
    lines.append(f"\nCommand: `{result['command']}`\n")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, st = result["summary"], result["settings"]
    fr = st["fractions"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    n = [s["scratch"][f"{f:g}"]["labeled_images"] for f in fr]
    for init, colour in zip(INITS, ("#c0392b", "#2471a3")):
        m = np.array([s[init][f"{f:g}"]["test_accuracy"]["mean"] for f in fr])
        sd = np.array([s[init][f"{f:g}"]["test_accuracy"]["std"] for f in fr])
        ax.errorbar(n, m, yerr=sd if len(st["seeds"]) > 1 else None,
                    marker="o", capsize=4, color=colour, label=LABELS[init])
    top = s["scratch"][f"{max(fr):g}"]["test_accuracy"]["mean"]
    ax.axhline(top, color="#2471a3", ls=":", lw=1,
               label=f"from scratch, {max(fr):.0%} labels")
    ax.set_xscale("log")
    ax.set_xticks(n, [f"{f:.0%}\n({k:,})" for f, k in zip(fr, n)])
    ax.minorticks_off()
    ax.set_xlabel("labels used (share of the labeled pool, images)")
    ax.set_ylabel("test accuracy (t10k)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Fashion-MNIST, ResNet-{st['depth']} w{st['width']:g}, "
                 f"{st['pretrain_steps']} SimCLR steps, seeds {st['seeds']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
