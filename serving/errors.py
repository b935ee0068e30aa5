"""The one exception type that becomes a JSON ``{"error": ...}`` response, and the
rule for client input in its message: at most a short, escaped excerpt."""

from __future__ import annotations

from typing import Any

EXCERPT_CHARS = 64  # of client input quoted in an error (a name, a version, a type)
MAX_MESSAGE_CHARS = 1024  # a backstop for every error body, whatever built the message


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """Client input for an error message: quoted, escaped (control characters and quotes
    cannot break the line or the JSON reader's view of it) and cut to ``limit``
    characters, with the original length when cut."""
    text = value if isinstance(value, str) else repr(value)
    cut = text[:limit]
    shown = repr(cut)
    return shown if len(text) <= limit else f"{shown[:-1]}...{shown[-1]} ({len(text)} chars)"


def bounded(message: str) -> str:
    """A message cut to MAX_MESSAGE_CHARS (messages quote client input only through
    ``excerpt``; this keeps a slip from echoing a megabyte)."""
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."


class ApiError(Exception):
    """A client-facing error: an HTTP status and a message safe to show.

    Messages never contain request content (image bytes, base64) or stack
    traces; they say what was wrong and, where useful, what to send instead.
    Client input (names, versions, types) appears only as ``excerpt(...)``.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        message = bounded(message)
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = dict(headers or {})

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"ApiError({self.status}, {self.message!r})"


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the limit of {limit} bytes (--max-body-bytes)")
