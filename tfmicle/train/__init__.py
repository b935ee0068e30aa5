"""Training: contrastive pretraining (SimCLR / MICLe) and supervised fine-tuning, the
shared runner (step budget, exact resume, stop on NaN) and validation during
fine-tuning. ``python -m tfmicle.train`` is the CLI (tfmicle.train.cli).

Imports nothing heavy: ``from tfmicle import train; train.main(argv)`` and --help stay
instant. Map: docs/architecture.md.
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The CLI's entry point (tfmicle.train.cli.main)."""
    from tfmicle.train.cli import main as cli_main
    return cli_main(argv)


__all__ = ["main"]
