"""The server writes a response's head together with its first body bytes
(service/api/http_limits.py): a process killed between the two would leave nginx with
a head it cannot retry. Every way a response ends still delivers the head: with a
body, with an empty body and ``Connection: close``, with none at all (HEAD), and
keep-alive and pipelined requests are answered in order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.api.http_limits import HttpLimits, protocol_factory

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

BODY = b'{"predictions": [3]}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/empty-close``: 200, no body, ``Connection: close``; ``/held``: the body
    waits for ``scope["state"]["release"]``; anything else: `BODY`, keep-alive."""
    if scope["type"] == "lifespan":
        return
    await receive()
    path = scope["path"]
    if path == "/empty-close":
        headers = [(b"content-length", b"0"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/held":
        await scope["state"]["release"].wait()
    await send({"type": "http.response.body", "body": BODY})


def _protocol(state: dict[str, Any]) -> Any:
    config = Config(app=app, lifespan="off", log_level="warning")
    config.load()
    return protocol_factory(HttpLimits())(config, ServerState(), state)


class RecordingTransport(asyncio.Transport):
    """A transport that keeps every ``write`` apart, to count them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _request(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


async def _settle() -> None:
    """Let the application's task run as far as it can."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_head_leaves_in_one_write_with_the_first_body_bytes() -> None:
    async def scenario() -> list[bytes]:
        transport = RecordingTransport()
        protocol = _protocol({})
        protocol.connection_made(transport)
        protocol.data_received(_request("/"))
        await _settle()
        return transport.writes

    writes = asyncio.run(scenario())
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\n" + BODY)


def test_no_byte_is_written_while_the_application_holds_its_body_back() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        release = asyncio.Event()
        transport = RecordingTransport()
        protocol = _protocol({"release": release})
        protocol.connection_made(transport)
        protocol.data_received(_request("/held"))
        await _settle()
        before = list(transport.writes)
        release.set()
        await _settle()
        return before, transport.writes

    before, after = asyncio.run(scenario())
    assert before == []  # a replica killed now has sent nothing: nginx may retry
    assert len(after) == 1 and after[0].endswith(BODY)


def test_a_held_head_is_dropped_when_the_client_has_gone() -> None:
    async def scenario() -> list[bytes]:
        release = asyncio.Event()
        transport = RecordingTransport()
        protocol = _protocol({"release": release})
        protocol.connection_made(transport)
        protocol.data_received(_request("/held"))
        await _settle()
        transport.close()  # asyncio closes the transport before reporting the loss
        protocol.connection_lost(None)
        release.set()
        await _settle()
        return transport.writes

    assert asyncio.run(scenario()) == []


async def _exchange(requests: bytes, *, read_to_close: bool, expect: int = 1) -> bytes:
    """Send ``requests`` to a real server on loopback; read ``expect`` responses
    (or everything until the server closes) and return the bytes."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _protocol({}), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(requests)
        if read_to_close:
            received = await asyncio.wait_for(reader.read(), timeout=10)
        else:
            received = b""
            while received.count(b"HTTP/1.1 ") < expect or not received.endswith(BODY):
                chunk = await asyncio.wait_for(reader.read(65536), timeout=10)
                assert chunk, f"the server closed the connection after {received!r}"
                received += chunk
        writer.close()
        return received
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_connection_close_with_an_empty_body_reaches_the_client_whole(method: str) -> None:
    """The container's HEALTHCHECK reads such answers: the head must be flushed before
    the connection closes (for HEAD, no body write ever carries it)."""
    received = asyncio.run(_exchange(_request("/empty-close", method), read_to_close=True))
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in head.lower()
    assert b"content-length: 0" in head.lower()
    assert body == b""
    assert received.endswith(b"\r\n\r\n")


def test_pipelined_requests_are_answered_in_order() -> None:
    received = asyncio.run(_exchange(_request("/") + _request("/"), read_to_close=False, expect=2))
    responses = received.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 2
    assert all(r.startswith(b"200 OK\r\n") and r.endswith(b"\r\n\r\n" + BODY) for r in responses)
    assert b"connection: close" not in received.lower()


@pytest.mark.parametrize("methods", [("GET", "GET", "GET"), ("HEAD", "GET", "HEAD")])
def test_a_kept_alive_connection_answers_each_request_before_the_next(
    methods: tuple[str, ...],
) -> None:
    """Each answer is read whole before the next request is sent: a HEAD answer, which
    has no body bytes to carry its head, must leave on its own."""

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _protocol({}), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        answers = []
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for method in methods:
                writer.write(_request("/", method))
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
                if method != "HEAD":
                    answer += await asyncio.wait_for(reader.readexactly(len(BODY)), timeout=10)
                answers.append(answer)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
        return answers

    answers = asyncio.run(scenario())
    assert len(answers) == len(methods)
    for method, answer in zip(methods, answers, strict=True):
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection: close" not in answer.lower()
        assert answer.endswith(b"\r\n\r\n" if method == "HEAD" else BODY)
