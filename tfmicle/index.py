"""`python -m tfmicle.index`: build a case index for similar-case retrieval from a labelled
reference archive (the library: tfmicle/score/index.py; the folder: tfmicle/caseindex).

    python -m tfmicle.index --model MODELS/<name>[/<version>] --data SRC [--split train] \\
        --out INDEX [--meta-cols age,sex,localization] [--dtype float32|float16] [--images ROOT]

SRC is what ``tfmicle.score`` reads (records folder, CSV manifest, image folder,
``tfds:NAME``). Serve the index from ``MODELS/<name>/<version>/similar/`` (or
``--similar-index``), evaluate it with ``python -m tfmicle.score ... --similar INDEX``.
Map: docs/architecture.md."""
from __future__ import annotations

import sys

from tfmicle import cli
from tfmicle.caseindex.store import DEFAULT_DTYPE, DTYPES
from tfmicle.score.index import IndexOptions, build


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m tfmicle.index",
        description="Embed the labelled cases of a reference archive with an exported model's "
                    "'embedding' output and write a case index (similar-case retrieval). "
                    "Unlabelled cases are left out; unreadable images are skipped and counted.")
    p.add_argument("--model", required=True, help="MODELS/<name> (highest published version) or "
                                                  "MODELS/<name>/<version>; may be a URL")
    p.add_argument("--data", required=True, help="records folder, CSV manifest, image folder or "
                                                 "tfds:NAME[/CONFIG]")
    p.add_argument("--split", default="train", help="records / TFDS split (default: train)")
    p.add_argument("--out", required=True, help="index folder, local or a URL (gs://...); e.g. "
                                                "MODELS/<name>/<version>/similar to serve it")
    p.add_argument("--meta-cols", default="", metavar="A,B",
                   help="metadata columns kept with each case and returned by /similar "
                        "(default: none)")
    p.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES,
                   help=f"stored embeddings (default {DEFAULT_DTYPE})")
    p.add_argument("--images", help="root folder of a CSV manifest's image paths "
                                    "(default: the CSV's folder)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    return cli.add_output_flags(p)


def main(argv: list[str] | None = None) -> int:
    args = cli.start(build_parser(), argv)

    def progress(total: int, name: str):
        lines = cli.ProgressLines(total, "img", write=lambda line: print(
            f"{name}: {line}", file=sys.stderr, flush=True))
        done = [0]

        def update(n: int) -> None:
            done[0] += n
            lines.update(done[0])
        return update

    def body() -> int:
        cols = [c.strip() for c in args.meta_cols.split(",") if c.strip()]
        result = build(args.model, args.data, args.out, IndexOptions(
            split=args.split, meta_cols=cols, dtype=args.dtype, images_root=args.images,
            batch_size=args.batch_size, progress=None if args.quiet else progress))
        per_class = ", ".join(f"{c} {n}" for c, n in result["per_class"].items())
        print(f"{result['cases']} cases ({per_class}) from {result['images']} images indexed; "
              f"{result['unlabelled_cases']} unlabelled cases left out, "
              f"{result['skipped_images']} images skipped")
        print(result["index"])
        return 0

    return cli.run("tfmicle.index", body)


if __name__ == "__main__":
    sys.exit(main())
