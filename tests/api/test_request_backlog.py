"""The HTTP protocol counts each request's task as created and as started
(`RequestBacklog`): requests that arrive in one turn of the event loop are seen as
waiting by the first of them to reach its model, which can then share its call
(`LoopCoalescer`). The count must return to zero, whatever way the request ends."""

from __future__ import annotations

import asyncio
from typing import Any

from service.runtime.batching import REQUEST_BACKLOG

from .test_http_limits_head import RecordingTransport, _protocol, _request, _settle


def _connect(state: dict[str, Any]) -> tuple[Any, RecordingTransport]:
    protocol = _protocol(state)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


def test_requests_of_one_turn_wait_until_their_tasks_start() -> None:
    async def scenario() -> tuple[int, int, list[RecordingTransport]]:
        before = REQUEST_BACKLOG.waiting
        connections = [_connect({}) for _ in range(3)]
        for protocol, _ in connections:
            protocol.data_received(_request("/one"))
        arrived = REQUEST_BACKLOG.waiting - before  # created, none started yet
        await _settle()
        return arrived, REQUEST_BACKLOG.waiting - before, [t for _, t in connections]

    arrived, left, transports = asyncio.run(scenario())
    assert arrived == 3
    assert left == 0
    assert all(b"200 OK" in b"".join(t.writes) for t in transports)


def test_a_pipelined_request_counts_when_its_task_is_created() -> None:
    async def scenario() -> tuple[int, int, bytes]:
        before = REQUEST_BACKLOG.waiting
        protocol, transport = _connect({})
        protocol.data_received(_request("/one") + _request("/two"))
        # The second waits for the first's response: no task yet, so it is not counted.
        arrived = REQUEST_BACKLOG.waiting - before
        await _settle()
        return arrived, REQUEST_BACKLOG.waiting - before, b"".join(transport.writes)

    arrived, left, written = asyncio.run(scenario())
    assert arrived == 1
    assert left == 0
    assert written.count(b"200 OK") == 2


def test_a_refused_head_creates_no_task() -> None:
    async def scenario() -> int:
        before = REQUEST_BACKLOG.created
        protocol, _ = _connect({})
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")
        await _settle()
        return REQUEST_BACKLOG.created - before

    assert asyncio.run(scenario()) == 0
