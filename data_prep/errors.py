"""Errors the CLI turns into one readable line and exit status 2."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the command or its input (missing file, bad column, bad flag value)."""


class StrictError(UserError):
    """--strict: an image or row would have been skipped."""
