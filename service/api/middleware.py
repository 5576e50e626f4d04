"""Pure ASGI middleware: request body limit (413) and security headers, applied to
every route before any handler reads the body."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PayloadTooLarge
from .status import ErrorStatus, error_body, error_headers, is_v2_path, route_path, status_for

Rejected = Callable[[str, int, float], None]
"""Told of every request the guard answers itself: (path, status, seconds)."""

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI re-raises HTTPExceptions from body parsing
    and the error handlers turn it into a JSON 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class GuardMiddleware:
    """Rejects bodies over ``max_body_bytes`` (by Content-Length, or while streaming)
    and adds security headers to every response. ``on_reject`` counts the requests
    it answers itself (the handlers never see them)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, on_reject: Rejected | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body_bytes:
                    await self._reject(scope, send, started_at)
                    return
                break

        received = 0
        started = False
        over_limit = False

        async def limited_receive() -> Message:
            nonlocal received, over_limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over_limit = True
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, send, started_at)
                return
        if over_limit:
            # A handler answered the streamed-over-limit body (413 from the table):
            # no data plane counted it, so count it here.
            self._rejected(scope, started_at)

    def _rejected(self, scope: Scope, started_at: float) -> None:
        if self.on_reject is not None:
            status = self._status().status
            self.on_reject(scope["path"], status, time.perf_counter() - started_at)

    def _status(self) -> ErrorStatus:
        return status_for(PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes"))

    async def _reject(self, scope: Scope, send: Send, started_at: float) -> None:
        status = self._status()
        body = error_body(status, v2=is_v2_path(route_path(scope)))
        self._rejected(scope, started_at)
        await send(
            {
                "type": "http.response.start",
                "status": status.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *((k.lower().encode(), v.encode()) for k, v in error_headers(status).items()),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
