"""data_prep's user errors: tfmicle.cli.UsageError's kind (one readable line, exit 2)."""
from __future__ import annotations

from tfmicle.cli import UsageError


class UserError(UsageError):
    """A mistake in the command or its input (missing file, bad column, bad flag value)."""


class StrictError(UserError):
    """--strict: an image or row would have been skipped."""
