"""What every CLI of the project shares (tfmicle.train, .export, .score, .demo,
``python -m data_prep`` and ``python -m serving``): one-line usage errors (exit 2, no
traceback for expected mistakes), quiet TensorFlow start-up and logging set-up.
Imports nothing but the standard library, so --help is instant and data_prep's worker
processes and the server can use it. Map: docs/architecture.md."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

USAGE_EXIT = 2


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line on stderr and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(USAGE_EXIT)


def add_output_flags(p: argparse.ArgumentParser, quiet: bool = True) -> argparse.ArgumentParser:
    """-q/--quiet (no progress bar; when the tool has one) and -v/--verbose (debug log)."""
    if quiet:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def start(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses argv (a bad flag exits 2, --help 0), then quiets TensorFlow's start-up and
    sets up logging (--verbose: debug)."""
    args = parser.parse_args(argv)
    quiet_tensorflow()
    setup_logging(getattr(args, "verbose", False))
    return args


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ start-up chatter out of the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def run(prog: str, body: Callable[[], int | None],
        user_errors: Sequence[type[BaseException]] = ()) -> int:
    """Runs a CLI body; expected mistakes (UsageError, FileNotFoundError and the given
    types) print one line `prog: error: ...` and return 2, without a traceback. A
    parser run inside the body exits through here too: --help returns 0, a bad flag 2."""
    try:
        return int(body() or 0)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        raise
    except (UsageError, FileNotFoundError, *user_errors) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"{prog}: error: {msg}\n")
        return USAGE_EXIT
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
