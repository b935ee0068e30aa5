"""``python -m data_prep``: raw datasets -> case-grouped TFRecords; ``inspect`` checks them.

Usage:
  python -m data_prep --format F --input PATH --out DIR [options]
  python -m data_prep inspect DIR [--decode-images]
"""
from __future__ import annotations

import argparse
import logging
import sys

from data_prep import FORMATS
from tfmicle import cli, fileio

PROG = "python -m data_prep"
EPILOG = """\
formats (--input is what the source distributes):
  csv       the manifest file; images relative to --images (default: its folder)
  folders   root/<class>/<image>; root/unlabeled/ and images in root are unlabeled
  ham10000  folder with HAM10000_metadata.csv + HAM10000_images_part_1/2
  isic2019  folder with ISIC_2019_Training_GroundTruth.csv (+ _Metadata.csv) + images
  isic2020  folder with train.csv + images (jpeg/train/ or train/, JPEG or DICOM)
  chexpert  the CheXpert-v1.0-small folder (train.csv, valid.csv, train/, valid/)
DICOM files (.dcm or DICM magic) are accepted wherever an image is expected.

other commands:
  python -m data_prep inspect DIR   summary + check that every shard parses

exit status: 0 done, 1 inspect found problems, 2 bad usage or input (--strict: any skip)
"""


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 0.01,0.1,1") from None


def _fractions(text: str) -> dict[str, float]:
    out = {}
    for part in _csv_list(text):
        name, sep, val = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(val)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected name=fraction, e.g. train=0.8,validation=0.1,test=0.1"
            ) from None
    return out


def convert_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description="Convert a medical image dataset to case-grouped "
                "TFRecords (one tf.train.Example per case, patient-level splits).",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--format", required=True, choices=FORMATS, metavar="FORMAT",
                    help=f"source layout: {', '.join(FORMATS)}")
    io.add_argument("--input", required=True, metavar="PATH",
                    help="the source folder (csv: the manifest file); a path or a URL "
                         "(gs://...)")
    io.add_argument("--out", required=True, metavar="DIR",
                    help="output folder (or URL; dataset.json is written last)")
    io.add_argument("--overwrite", action="store_true",
                    help="replace the dataset in a non-empty --out")
    io.add_argument("--strict", action="store_true",
                    help="fail (exit 2) instead of skipping a missing, corrupt or "
                         "conflicting image or row")
    c = p.add_argument_group("csv format columns (defaults used when present)")
    c.add_argument("--images", metavar="ROOT", help="image root (default: the manifest's folder)")
    c.add_argument("--image-col", metavar="COL", help="image path column (default: image)")
    c.add_argument("--case-col", metavar="COL",
                   help="case id column (default: case_id; none: each image is a case)")
    c.add_argument("--patient-col", metavar="COL", help="patient id column (default: patient_id)")
    c.add_argument("--view-col", metavar="COL", help="view column (default: view)")
    c.add_argument("--split-col", metavar="COL",
                   help="source split column, kept as is (default: split; '' to ignore)")
    c.add_argument("--label-col", metavar="COL",
                   help="multi-class label column, class names as text (default: label)")
    c.add_argument("--label-cols", type=_csv_list, metavar="A,B,...",
                   help="multi-label columns with 1/0/-1/blank (makes the task multilabel)")
    c.add_argument("--meta-cols", type=_csv_list, metavar="A,B,...",
                   help="patient / acquisition metadata columns kept per image in the records "
                        "(e.g. sex,age,site; for tfmicle.score --subgroups)")
    o = p.add_argument_group("other format options")
    o.add_argument("--class-names", type=_csv_list, metavar="A,B,...",
                   help="class order (csv, folders, isic2020 diagnosis; default: sorted)")
    o.add_argument("--case-regex", metavar="REGEX",
                   help="folders: group files into cases by the (?P<case>...) group (or group "
                        "1) of this regex on the file name; (?P<patient>...) sets the patient")
    o.add_argument("--unlabeled-dirs", type=_csv_list, default=["unlabeled"], metavar="A,B",
                   help="folders: folder names holding unlabeled images (default: unlabeled)")
    o.add_argument("--near-duplicates", metavar="CSV",
                   help="pairs of near-identical photos of one case (columns image_a, "
                        "image_b: image ids), so MICLe never pairs them; default for "
                        "ham10000: near_duplicate_pairs.csv in --input when present")
    o.add_argument("--isic2020-label", choices=("target", "diagnosis"), default="target",
                   help="isic2020: label from target (benign/malignant, default) or diagnosis")
    s = p.add_argument_group("splits and label subsets")
    s.add_argument("--split-fractions", type=_fractions, metavar="NAME=F,...",
                   default={"train": 0.8, "validation": 0.1, "test": 0.1},
                   help="patient-level split of cases without a source split "
                        "(default: train=0.8,validation=0.1,test=0.1)")
    s.add_argument("--split-seed", type=int, default=0, help="seed of the split hash (default 0)")
    s.add_argument("--label-fractions", type=_floats, metavar="F,...",
                   default=[0.01, 0.05, 0.1, 0.25, 0.5, 1.0],
                   help="nested stratified subsets written to subsets/<split>-<pct>pct.txt "
                        "(default: 0.01,0.05,0.1,0.25,0.5,1)")
    s.add_argument("--subset-splits", type=_csv_list, default=["train"], metavar="A,B",
                   help="splits that get label subsets (default: train)")
    im = p.add_argument_group("images and shards")
    im.add_argument("--max-side", type=int, default=1024, metavar="PX",
                    help="resize images whose longer side exceeds PX (0: never; default 1024)")
    im.add_argument("--jpeg-quality", type=int, default=95, help="for re-encoded JPEGs (95)")
    im.add_argument("--shard-mb", type=float, default=256.0,
                    help="target shard size in MB of source images (default 256)")
    r = p.add_argument_group("running")
    r.add_argument("--runner", choices=("local", "beam"), default="local",
                   help="local: worker processes on this machine (default); beam: an Apache "
                        "Beam pipeline (pip install 'tfmicle[beam]')")
    r.add_argument("--workers", type=int, default=0,
                   help="local worker processes (default: all cores)")
    r.add_argument("--beam-args", default="", metavar="ARGS",
                   help="Beam pipeline options, e.g. \"--direct_num_workers=4 "
                        "--direct_running_mode=multi_processing\" or another runner's "
                        "options (default: DirectRunner); the workers must see --input and "
                        "--out as local paths (shared filesystem)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="(default INFO)")
    return p


def inspect_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog=f"{PROG} inspect",
                description="Print a dataset's summary and check that every shard parses "
                            "and agrees with dataset.json (exit 1 when not).")
    p.add_argument("out", metavar="DIR", help="a data_prep output folder")
    p.add_argument("--decode-images", action="store_true",
                   help="also decode every image (slower)")
    p.add_argument("--log-level", default="WARNING",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _setup_logging(level: str) -> None:
    cli.quiet_tensorflow()
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="data_prep: %(levelname)s %(message)s")
    if level != "DEBUG":
        logging.getLogger("apache_beam").setLevel(logging.WARNING)


class _ProgressLog:
    """Progress without a terminal: plain log lines with the rate and ETA
    (tfmicle.cli.ProgressLines: at most one every 10 s, and the last)."""

    def __init__(self):
        self.lines: cli.ProgressLines | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.lines is None:
            self.lines = cli.ProgressLines(total, "img",
                                           write=logging.getLogger("data_prep").info)
        self.lines.update(done)


def _run_convert(argv: list[str]) -> int:
    args = convert_parser().parse_args(argv)
    _setup_logging(args.log_level)
    import shlex

    from data_prep.convert import ConvertConfig, convert
    from data_prep.manifest import CsvColumns, FormatOptions
    from tfmicle.imagefiles import ImageOptions

    if args.max_side < 0:
        raise cli.UsageError("--max-side must be >= 0")
    if not 1 <= args.jpeg_quality <= 100:
        raise cli.UsageError("--jpeg-quality must be within 1..100")
    if args.shard_mb <= 0:
        raise cli.UsageError("--shard-mb must be > 0")
    if args.workers < 0:
        raise cli.UsageError("--workers must be >= 0")
    for flag, path in (("--input", args.input), ("--images", args.images), ("--out", args.out)):
        fileio.check_url(path, flag)
    cfg = ConvertConfig(
        format=args.format, input=args.input, out=args.out,
        format_options=FormatOptions(
            images=args.images,
            columns=CsvColumns(args.image_col, args.case_col, args.patient_col, args.view_col,
                               args.split_col, args.label_col, args.label_cols,
                               args.meta_cols),
            class_names=args.class_names, case_regex=args.case_regex,
            unlabeled_dirs=tuple(args.unlabeled_dirs), isic2020_label=args.isic2020_label),
        split_fractions=args.split_fractions, split_seed=args.split_seed,
        label_fractions=args.label_fractions, subset_splits=args.subset_splits,
        image_options=ImageOptions(args.max_side, args.jpeg_quality),
        shard_mb=args.shard_mb, workers=args.workers, runner=args.runner,
        beam_args=shlex.split(args.beam_args), overwrite=args.overwrite, strict=args.strict,
        near_duplicates=args.near_duplicates)

    bars: list = []
    progress = None
    if not args.no_progress:
        if sys.stderr.isatty():
            from tqdm import tqdm

            def progress(done: int, total: int) -> None:
                if not bars:
                    bars.append(tqdm(total=total, unit="img", dynamic_ncols=True,
                                     file=sys.stderr, desc="images"))
                bars[0].update(done - bars[0].n)
        else:
            progress = _ProgressLog()
    try:
        if progress is not None and not isinstance(progress, _ProgressLog):
            from tqdm.contrib.logging import logging_redirect_tqdm
            with logging_redirect_tqdm():
                info = convert(cfg, progress)
        else:
            info = convert(cfg, progress)
    finally:
        for b in bars:
            b.close()
    for name, s in info["splits"].items():
        print(f"{name}: {s['cases']} cases, {s['images']} images, {len(s['shards'])} shard(s)")
    print(f"skipped: {info['skipped']}" + (f" (see {fileio.join(args.out, 'skipped.csv')})"
                                           if info["skipped"] else ""))
    return 0


def _run_inspect(argv: list[str]) -> int:
    args = inspect_parser().parse_args(argv)
    _setup_logging(args.log_level)
    from data_prep.inspect_dataset import inspect_dataset
    fileio.check_url(args.out, "inspect")
    r = inspect_dataset(args.out, decode_images=args.decode_images)
    print("\n".join(r.lines))
    for p in r.problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 0 if r.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, 1 or 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if argv and argv[0] == "inspect":
            return _run_inspect(argv[1:])
        return _run_convert(argv[1:] if argv and argv[0] == "convert" else argv)

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
