"""Pure ASGI middleware: access log + metrics, API key, body size limit.

Order, outermost first: ``ObserveMiddleware`` (sees every status, 401 and 413
included) -> ``ApiKeyMiddleware`` (refuses before any body is read) ->
``BodyLimitMiddleware`` (refuses from Content-Length, or while streaming).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any, Awaitable, Callable

from .errors import ApiError, BodyTooLarge
from .metrics import Metrics

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("serving.access")

PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


async def send_json_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ObserveMiddleware:
    """Counts and times every request by route template; one access-log line each."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(elapsed)
            client = scope.get("client") or ("-", 0)
            access_log.info("%s %s %s %d %.1fms", client[0], method, scope.get("path", ""), status, elapsed * 1000)


class ApiKeyMiddleware:
    """When a key is set, every route except the health checks needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                given = v
                break
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        message = "missing API key: send 'Authorization: Bearer <key>'" if not given else "wrong API key"
        await send_json_error(send, 401, message, {"WWW-Authenticate": "Bearer"})


class BodyLimitMiddleware:
    """413 from Content-Length before reading, or as soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.limit = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    await send_json_error(send, 400, "invalid Content-Length header")
                    return
                if declared > self.limit:
                    await send_json_error(send, 413, BodyTooLarge(self.limit).message)
                    return
                break
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def send_wrapper(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send_wrapper)
        except ApiError as e:  # raised while a route streamed the body, not turned into a response
            if started:
                raise
            await send_json_error(send, e.status, e.message, e.headers)
