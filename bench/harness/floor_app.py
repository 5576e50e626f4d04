"""The framework floor: a bare ASGI app under the service's own uvicorn settings.

It reads the whole request body and answers a fixed JSON body (the service's own answer
to the benchmark's one-row request, recorded once by the runner), so its throughput is
what the service's HTTP stack can carry with no framework, auth, decoding, model or
defense at all: ``service / floor`` says how much of that the service keeps.

``python -m bench.harness.floor_app --port N --answer FILE`` runs it through the very
function `dynanoise serve` runs uvicorn with (same loop, the same bounded httptools
protocol, access log off, no server header).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def floor_app(answer: bytes) -> Callable[[Message, Receive, Send], Awaitable[None]]:
    """An ASGI app that drains each request's body and answers ``answer`` with 200."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    body = {"type": "http.response.body", "body": answer}

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        more_body = True
        while more_body:
            message = await receive()
            more_body = message.get("more_body", False)
        await send(start)
        await send(body)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The benchmark's framework floor.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer", type=Path, required=True, help="file of the fixed answer")
    args = parser.parse_args(argv)
    from service.commands import serve
    from service.settings import Settings

    settings = Settings(host="127.0.0.1", port=args.port, workers=1, log_level="warning")
    # The service's own uvicorn call (private there): the floor must never drift from it.
    serve._run_uvicorn(settings, floor_app(args.answer.read_bytes()), False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
