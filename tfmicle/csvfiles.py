"""CSV manifests as data_prep and tfmicle.score read them: the delimiter from the
header (comma, tab or semicolon), cells stripped, and CheXpert-style label cells.
Any path may be a URL (tfmicle.fileio). Map: docs/architecture.md."""
from __future__ import annotations

import csv
import math

from tfmicle import fileio
from tfmicle.cli import UsageError


class CsvError(UsageError):
    """A CSV that cannot be read (missing, not text, no header): one line, exit 2."""


class _Semicolon(csv.excel):
    delimiter = ";"


def read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of a CSV (comma; tab or semicolon when the header has more of those),
    values stripped."""
    if not fileio.isfile(path):
        raise CsvError(f"{path}: file not found")
    try:
        with fileio.text_stream(path, "utf-8-sig") as f:
            first = f.readline()
            f.seek(0)
            delim = max(",\t;", key=first.count) if first else ","
            dialect = {",": csv.excel, "\t": csv.excel_tab, ";": _Semicolon}[delim]
            reader = csv.DictReader(f, dialect=dialect)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise CsvError(f"{path}: not a readable CSV ({e})") from None
    if not header:
        raise CsvError(f"{path}: empty CSV (no header)")
    return header, rows


def parse_multi_value(text: str) -> float:
    """CheXpert-style label cell: 1 positive, 0 negative, -1 uncertain, blank -> NaN."""
    t = text.strip()
    if t == "":
        return math.nan
    v = float(t)                       # ValueError for anything else
    if v not in (1.0, 0.0, -1.0):
        raise ValueError(t)
    return v
