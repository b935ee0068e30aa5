"""The one pure-ASGI middleware in front of the routes.

In this order, for every HTTP request:
1. observe: count and time it by route template (Prometheus) and write one
   access-log line (method, path, status, time; never any content);
2. API key: when one is set, refuse with 401 before any body is read, except
   the health checks;
3. body limit: 413 from Content-Length before reading, or as soon as a
   streamed body passes the limit;
4. body timeout: 408 (and the connection closed) when the next piece of a body
   does not come within ``body_timeout_s``.
(The header timeout and size limit act before a request reaches the app:
serving.protocol.)
One class rather than three stacked ones: each ASGI layer costs every request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any, Awaitable, Callable

from tfmicle.model_format import parse_uint

from .errors import ApiError, BodyTooLarge, bounded
from .metrics import Metrics

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("serving.access")

PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


async def send_json_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": bounded(message)}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, api_key: str | None, max_body_bytes: int,
                 body_timeout_s: float = 30.0):
        self.app = app
        self.metrics = metrics
        self.key = api_key.encode() if api_key else None
        self.limit = int(max_body_bytes)
        self.body_timeout = float(body_timeout_s)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def observed_send(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is not None:
                await send_json_error(observed_send, *refusal)
                return
            received = 0
            body_done = False

            async def limited_receive() -> dict:
                nonlocal received, body_done
                if body_done:  # later calls only wait for a disconnect: no deadline
                    return await receive()
                try:
                    message = await asyncio.wait_for(receive(), self.body_timeout)
                except asyncio.TimeoutError:
                    access_log.info("request body stalled for %gs on %s; closing", self.body_timeout, scope.get("path"))
                    raise ApiError(408, f"request body stalled: nothing received for {self.body_timeout:g}s "
                                        "(--body-timeout)", {"Connection": "close"}) from None
                body_done = message["type"] != "http.request" or not message.get("more_body", False)
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.limit:
                        raise BodyTooLarge(self.limit)
                return message

            try:
                await self.app(scope, limited_receive, observed_send)
            except ApiError as e:  # raised while a route streamed the body, not turned into a response
                if started:
                    raise
                await send_json_error(observed_send, e.status, e.message, e.headers)
        finally:
            self._observe(scope, status, time.perf_counter() - start)

    def _refuse(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, headers) when the request is refused before the routes."""
        authorization = b""
        declared = None
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                authorization = v
            elif k == b"content-length":
                declared = v
        if self.key is not None and scope.get("path") not in PUBLIC_PATHS:
            scheme, _, token = authorization.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                message = "wrong API key" if authorization else "missing API key: send 'Authorization: Bearer <key>'"
                return 401, message, {"WWW-Authenticate": "Bearer"}
        if declared is not None:
            size = parse_uint(declared.decode("latin-1").strip())
            if size is None:
                return 400, "invalid Content-Length header", {"Connection": "close"}
            if size > self.limit:
                return 413, BodyTooLarge(self.limit).message, {}
        return None

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        key = (template, method, status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a tuple: once per combination
            children = self._children[key] = (
                self.metrics.requests.labels(template, method, str(status)),
                self.metrics.latency.labels(template, method),
            )
        children[0].inc()
        children[1].observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("-", 0)
            access_log.info("%s %s %s %d %.1fms", client[0], method, scope.get("path", ""), status, elapsed * 1000)
