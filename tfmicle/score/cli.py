"""`python -m tfmicle.score`: the CLI over tfmicle.score.job.score (usage in
tfmicle/score/__init__.py)."""
from __future__ import annotations

import logging
import math
import shlex
import sys

from tfmicle import cli
from tfmicle.score.job import score
from tfmicle.score.model import ScoreError
from tfmicle.score.options import FORMATS, RUNNERS, ScoreOptions
from tfmicle.score.report import parquet_available
from tfmicle.score.subgroups import Subgroups, parse_age_bands, parse_subgroups


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m tfmicle.score",
        description="Batch-score a records split, a TFDS split, an image folder or a CSV "
                    "manifest with an exported model: per-image and per-case predictions, "
                    "metrics.json (when labeled) and report.md with ROC / PR / confusion "
                    "figures.")
    p.add_argument("--model", required=True, help="MODELS/<name> (highest version) or "
                                                  "MODELS/<name>/<version>; any path may be a "
                                                  "URL (gs://...)")
    p.add_argument("--data", required=True, help="records folder, tfds:NAME[/CONFIG] (a "
                                                 "prepared TFDS dataset), image folder or "
                                                 "CSV manifest")
    p.add_argument("--out", required=True, help="output folder, local or a URL such as "
                                                "gs://bucket/reports (not ram:// with "
                                                "--runner beam)")
    p.add_argument("--split", help="records or TFDS split to score (default: test)")
    p.add_argument("--compare", metavar="SRC2", help="a second dataset, reported side by side")
    p.add_argument("--compare-split", help="split of --compare records (default: --split)")
    p.add_argument("--images", help="root folder of the CSV manifest's image paths "
                                    "(default: the CSV's folder)")
    p.add_argument("--format", default="csv", choices=FORMATS,
                   help="prediction tables as csv (default) or parquet (needs pyarrow)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap replicates for the 95%% CIs (0 = none; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--auc-classes", help="comma-separated classes for the mean AUC "
                                         "(default: all), e.g. the CheXpert competition five")
    p.add_argument("--subgroups", metavar="A,B,...",
                   help="metrics per patient subgroup of these metadata columns, e.g. "
                        "sex,age_band,site (friendly names: tfmicle/score/subgroups.py)")
    p.add_argument("--age-bands", metavar="E0,E1,...",
                   help="age band edges for age / age_band, e.g. 0,40,60 "
                        "(default: decades)")
    p.add_argument("--subgroup-min-cases", type=int, default=5, metavar="N",
                   help="smallest group the largest subgroup gap may compare (default 5)")
    p.add_argument("--explain", type=int, default=0, metavar="N",
                   help="Grad-CAM overlays of the N most confident errors and N most confident "
                        "correct predictions into the report (default 0: none)")
    p.add_argument("--runner", default="local", choices=RUNNERS,
                   help="local: this process (default); beam: an Apache Beam pipeline "
                        "with RunInference (pip install 'tfmicle[beam]'; README: Scoring "
                        "on Beam)")
    p.add_argument("--beam-args", default="", metavar="ARGS",
                   help="Beam pipeline options, e.g. --beam-args=\"--runner=DataflowRunner "
                        "--project=P --region=R --temp_location=gs://B/tmp\" "
                        "(default: DirectRunner)")
    p.add_argument("--model-card", action="store_true",
                   help="write model_card.json / .md into --out: the model version's card "
                        "with this held-out performance, --subgroups and --compare added")
    p.add_argument("--similar", metavar="INDEX",
                   help="a case index built by this model (python -m tfmicle.index): report "
                        "precision@k of its nearest reference cases, per class, next to chance")
    p.add_argument("--similar-k", type=int, default=ScoreOptions.similar_k, metavar="K",
                   help="neighbours per query case for --similar (default 5)")
    t = p.add_argument_group("TFDS sources (--data tfds:NAME)")
    t.add_argument("--tfds-data-dir", help="TFDS data dir (default: TFDS's)")
    t.add_argument("--image-key", help="Image feature (default: image)")
    t.add_argument("--label-key", help="ClassLabel feature (default: label; '' = unlabeled)")
    t.add_argument("--case-key", help="feature naming the case (default: each example is "
                                      "its own case)")
    return cli.add_output_flags(p)


def tfds_options(args) -> dict:
    """The TFDS flags given, as TfdsSource fields."""
    pairs = (("data_dir", args.tfds_data_dir), ("image_key", args.image_key),
             ("label_key", args.label_key), ("case_key", args.case_key))
    return {k: v for k, v in pairs if v is not None}


def options(args, progress_factory=None) -> ScoreOptions:
    """The parsed flags as ScoreOptions (ScoreError for a value argparse cannot check)."""
    try:
        beam_args = shlex.split(args.beam_args)
    except ValueError as e:
        raise ScoreError(f"--beam-args: {e}") from None
    auc = [c.strip() for c in args.auc_classes.split(",") if c.strip()] \
        if args.auc_classes else None
    if args.subgroup_min_cases < 1:
        raise ScoreError("--subgroup-min-cases must be >= 1")
    groups = Subgroups(parse_subgroups(args.subgroups), parse_age_bands(args.age_bands),
                       args.subgroup_min_cases)
    return ScoreOptions(
        split=args.split, compare=args.compare, compare_split=args.compare_split,
        format=args.format, batch_size=args.batch_size, replicates=args.bootstrap,
        seed=args.seed, auc_classes=auc, images_root=args.images, report=True,
        progress=progress_factory, subgroups=groups, explain=args.explain,
        tfds_options=tfds_options(args), runner=args.runner, beam_args=beam_args,
        model_card=args.model_card,
        similar=args.similar, similar_k=args.similar_k)


def main(argv: list[str] | None = None) -> int:
    args = cli.start(build_parser(), argv)
    if args.format == "parquet" and not parquet_available():
        sys.stderr.write("tfmicle.score: error: --format parquet needs pyarrow "
                         "(pip install pyarrow); or use --format csv\n")
        return cli.USAGE_EXIT

    style = cli.progress_style(args.quiet, sys.stderr)

    def progress_factory(total: int, name: str):
        if style == 2:  # a pipe or a log file: plain lines, no \r
            lines = cli.ProgressLines(total, "img", write=lambda line: print(
                f"{name}: {line}", file=sys.stderr, flush=True))
            done = [0]

            def plain(n):
                done[0] += n
                lines.update(done[0])
            return plain
        from tqdm import tqdm
        bar = tqdm(total=total, unit="img", desc=name, disable=style == 0, file=sys.stderr,
                   dynamic_ncols=True)

        class Bar:
            def __call__(self, n):
                bar.update(n)

            def close(self):
                bar.close()
        return Bar()

    if args.runner == "beam":
        logging.getLogger("apache_beam").setLevel(logging.WARNING)

    def body() -> int:
        result = score(args.model, args.data, args.out, options(args, progress_factory))
        for run in result["runs"]:
            m = run["metrics"]
            summary = ""
            if m:
                c = m["case"]
                parts = [f"{k}={c[k]:.4f}" for k in ("top1_accuracy", "mean_auc")
                         if c.get(k) is not None and math.isfinite(c[k])]
                summary = " (case level: " + ", ".join(parts) + ")" if parts else ""
            print(f"{run['name']}: {run['scored']} images scored, {run['skipped']} skipped"
                  f"{summary}")
        print(result.get("report", args.out))
        return 0

    return cli.run("tfmicle.score", body)

