"""What every CLI of the project shares (tfmicle.train, .export, .score, .demo,
``python -m data_prep`` and ``python -m serving``): one-line usage errors (exit 2, no
traceback for expected mistakes), quiet TensorFlow start-up and logging set-up.
Imports nothing but the standard library, so --help is instant and data_prep's worker
processes and the server can use it. Map: docs/architecture.md."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
from typing import Callable, Iterator, Sequence

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


def progress_style(quiet: bool = False, stream=None) -> int:
    """How a CLI shows progress on stream (default stdout): 0 none (--quiet), 1 a live
    bar (a terminal), 2 plain lines (a pipe or a log file: ProgressLines, no \\r, no
    colour)."""
    if quiet:
        return 0
    isatty = getattr(stream or sys.stdout, "isatty", None)
    return 1 if isatty is not None and isatty() else 2


class ProgressLines:
    """Progress for logs: one plain line at most every `every` seconds (and at the end),
    "<unit> N/T (P%)  name value ...  R <unit>/s  ETA h:mm:ss"."""

    def __init__(self, total: int, unit: str = "step", start: int = 0, every: float = 10.0,
                 write: Callable[[str], None] | None = None):
        self.total, self.unit, self.start, self.every = int(total), unit, int(start), every
        self.write = write or (lambda line: print(line, flush=True))
        self.t0 = self.last = time.monotonic()

    def update(self, done: int, **values: float) -> None:
        now = time.monotonic()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        pct = 100.0 * done / max(self.total, 1)
        shown = "".join(f"  {k} {v:.4g}" for k, v in values.items())
        minutes, seconds = divmod(int(round(eta)), 60)
        eta_text = f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
        self.write(f"{self.unit} {done}/{self.total} ({pct:.0f}%){shown}  "
                   f"{rate:.3g} {self.unit}/s  ETA {eta_text}")


def start(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses argv (a bad flag exits 2, --help 0), then quiets TensorFlow's start-up and
    sets up logging (--verbose: debug)."""
    args = parser.parse_args(argv)
    quiet_tensorflow()
    setup_logging(getattr(args, "verbose", False))
    return args


# What TensorFlow 2.21 prints while `import tensorflow` runs, whatever TF_CPP_MIN_LOG_LEVEL
# says: the oneDNN notice (core/util/port.cc logs it at INFO through absl whenever oneDNN is
# on, before any code could raise absl's level; its only switch, TF_ENABLE_ONEDNN_OPTS=0,
# would turn oneDNN's faster kernels off too) and absl's line about logging before
# absl::InitializeLog(), each twice (two shared libraries, each with its own absl).
TF_IMPORT_NOISE = ("WARNING: All log messages before absl::InitializeLog()",
                   "] oneDNN custom operations are on.")


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ start-up chatter out of the user's terminal: its log level
    (TF_CPP_MIN_LOG_LEVEL hides the CPU-feature lines), oneDNN on, and the first
    `import tensorflow` of this process run with the TF_IMPORT_NOISE lines filtered out
    of stderr (every other line it writes comes through)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")   # oneDNN's kernels (the speed)
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


class _QuietTensorFlowImport:
    """A sys.meta_path finder for the one module `tensorflow`: its import runs inside
    filtered_stderr(TF_IMPORT_NOISE); then the finder removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                with filtered_stderr(TF_IMPORT_NOISE):
                    run(module)
            spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def filtered_stderr(noise: Sequence[str]) -> Iterator[None]:
    """Points file descriptor 2 (what C++ code writes to) at a temporary file for the
    block, then writes its lines back to stderr, less those containing any of noise."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:            # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(l for l in lines if not any(n in l for n in noise))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Runs a CLI body; expected mistakes (UsageError and every subclass: each tool's
    user error is one, see docs/architecture.md; FileNotFoundError) print one line
    `prog: error: ...` and return 2, without a traceback. A parser run inside the body
    exits through here too: --help returns 0, a bad flag 2."""
    try:
        return int(body() or 0)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        raise
    except (UsageError, FileNotFoundError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"{prog}: error: {msg}\n")
        return USAGE_EXIT
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
