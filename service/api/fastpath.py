"""A lean ASGI route to the inference endpoints, in front of FastAPI's router.

Requests that match `INFERENCE_ROUTES` are answered by `service.api.inference.respond`,
the very function FastAPI's inference routes call, so nothing is duplicated: the
route table, the key parsing, the data plane and the error table are the same.
What is skipped is FastAPI's per-request routing and dependency solving, Starlette's
middleware stack and its Request and Response objects: the headers are read once into
a plain mapping, the body straight from ``receive``, and an answer is sent as the two
ASGI messages Starlette's `Response` would send, header for header. The app installs
this inside GuardMiddleware only (see ``service.app``), so the body limit and the
security headers still apply. Paths are matched relative to the app's ``root_path``.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..serving import DataPlane, Encoded
from .inference import match, respond
from .status import route_path


class RequestHeaders(dict[str, str]):
    """A request's headers by name, looked up case-insensitively; of a repeated header
    the first value, as Starlette's ``Headers.get`` answers."""

    __slots__ = ()

    @classmethod
    def from_raw(cls, raw: Sequence[tuple[bytes, bytes]]) -> RequestHeaders:
        """From the ASGI scope's ``headers`` (names lower-case, latin-1)."""
        # Reversed, so that the first of a repeated header is the one written last.
        return cls(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in reversed(raw)
        )

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


async def read_body(receive: Receive) -> bytes:
    """The request's whole body, read as Starlette's ``Request.body`` reads it;
    ClientDisconnect when the client goes away first."""
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")  # the usual case: one message
        return body
    chunks: list[bytes] = []
    while True:
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
        message = await receive()


def raw_headers(encoded: Encoded) -> list[tuple[bytes, bytes]]:
    """The response headers Starlette's `Response` writes for ``encoded``, in its order:
    the answer's own, then content-length, then content-type."""
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in (encoded.headers or {}).items()
    ]
    names = {name for name, _ in headers}
    if b"content-length" not in names:
        headers.append((b"content-length", str(len(encoded.content)).encode("latin-1")))
    if b"content-type" not in names:
        media_type = encoded.media_type
        if media_type.startswith("text/") and "charset=" not in media_type.lower():
            media_type += "; charset=utf-8"
        headers.append((b"content-type", media_type.encode("latin-1")))
    return headers


class FastInferenceRoutes:
    """ASGI middleware: serves the inference routes without FastAPI's routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = match(route_path(scope))
            if found is not None:
                plane: DataPlane = scope["app"].state.dataplane
                headers = RequestHeaders.from_raw(scope["headers"])
                answer = await respond(plane, *found, headers, lambda: read_body(receive))
                if isinstance(answer, Response):
                    await answer(scope, receive, send)
                    return
                await send(
                    {"type": "http.response.start", "status": 200, "headers": raw_headers(answer)}
                )
                await send({"type": "http.response.body", "body": answer.content})
                return
        await self.app(scope, receive, send)
