"""The one exception type that becomes a JSON ``{"error": ...}`` response."""

from __future__ import annotations


class ApiError(Exception):
    """A client-facing error: an HTTP status and a message safe to show.

    Messages never contain request content (image bytes, base64) or stack
    traces; they say what was wrong and, where useful, what to send instead.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = dict(headers or {})

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"ApiError({self.status}, {self.message!r})"


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the limit of {limit} bytes (--max-body-bytes)")
