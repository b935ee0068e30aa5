"""The HTTP/1.1 connection under the app: uvicorn's httptools protocol plus the limits it
lacks, so that what a client does before the app sees a request is bounded too.

- Header timeout: a connection must deliver a request's line and headers within
  ``header_timeout_s`` of its first byte (or of connecting); else 408 (or a silent
  close when nothing came) and the connection is closed. uvicorn itself only times out
  a connection that is idle between requests (``timeout_keep_alive``), so a client
  that sent half a request line held a connection forever.
- The rest of a refused body: after an early answer (413, 401) uvicorn keeps reading
  the body the client goes on sending, with no deadline; a client that stalls there
  is closed after ``header_timeout_s`` too.
- Header size: more than ``max_header_bytes`` of request line and headers is 431
  (httptools has no limit: an endless URL or header grew the buffer without bound).
- The errors uvicorn answers itself (a request httptools cannot parse: bad request
  line, invalid Content-Length, bad chunked encoding) come out as JSON
  ``{"error": ...}`` like the app's, not plain text.

The body timeout is the middleware's (it sees ``receive``); the keep-alive timeout
is uvicorn's ``timeout_keep_alive``. uvicorn loads this class by its import path
(``http=PROTOCOL``), also in each ``--workers`` process; ``configure`` sets the limits.
WebSockets are off (``ws="none"``; no route uses them), so an upgrade request is an
ordinary HTTP request to the app, not uvicorn's plain-text 403.
"""

from __future__ import annotations

import asyncio
import http
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PROTOCOL = "serving.protocol:ServingHttpProtocol"


def _response(status: int, message: str) -> bytes:
    """A complete JSON error response that closes the connection."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class ServingHttpProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024

    # -- connection and request life cycle (uvicorn's protocol, then the limit) --------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._header_started = False  # a byte of the current request has arrived
        self._too_large = False
        super().connection_made(transport)
        self._arm_header_timer()  # a client that connects and sends nothing is bounded too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if (cycle is not None and cycle.response_complete and self._header_timer is None
                and self.timeout_keep_alive_task is None and not self.transport.is_closing()):
            # Bytes after the answer that started no request: the rest of a refused body.
            self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._header_started = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._header_started = False
        super().on_headers_complete()

    # -- the limits ---------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            self._too_large = True
            raise ValueError("request line and headers too large")  # httptools -> send_400_response

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._header_started:
            self.logger.info("closed a connection whose request headers took over %gs (--header-timeout)",
                             self.header_timeout_s)
            self.transport.write(_response(408, f"request headers not received within {self.header_timeout_s:g}s "
                                                "(--header-timeout)"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what httptools cannot parse, as JSON."""
        if self._too_large:
            reply = _response(431, f"request line and headers are larger than {self.max_header_bytes} bytes")
        else:
            reply = _response(400, "malformed HTTP request (request line, a header such as Content-Length, "
                                   "or the chunked body)")
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self.transport.write(reply)
            self.transport.close()


def configure(header_timeout_s: float, max_header_bytes: int) -> None:
    """Sets the limits of every connection of this process (called before serving)."""
    ServingHttpProtocol.header_timeout_s = float(header_timeout_s)
    ServingHttpProtocol.max_header_bytes = int(max_header_bytes)
