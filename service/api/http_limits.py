"""Limits uvicorn's HTTP/1.1 protocol lacks: the size of a request head, how long a
client may take to send a head or a body, how long a connection may idle, and how many
connections one process holds.

uvicorn's httptools protocol buffers a head of any size (an unauthenticated client could
make the server hold hundreds of MB), reads heads and bodies without a deadline
(slowloris) and arms its keep-alive timer only after a first response, so a connection
that sends nothing is never closed. `BoundedHttpToolsProtocol` adds those limits; pass
`protocol_factory(limits)` as uvicorn's ``http``.

It also writes a response's head together with its first body bytes (uvicorn writes
them apart): a process killed between the two would leave a load balancer holding a
head it cannot retry, where a connection that dies before any byte can be retried.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from ..runtime.batching import REQUEST_BACKLOG, RequestBacklog

__all__ = [
    "ARRIVAL_EXTENSION",
    "BoundedHttpToolsProtocol",
    "HttpLimits",
    "RefusalLog",
    "protocol_factory",
]


ARRIVAL_EXTENSION = "dynanoise.arrival"
"""ASGI scope extension: ``{"loop_time": t}``, the event loop's clock when the request's
head was parsed and its task created (`BoundedHttpToolsProtocol`). If the connection is
lost before the response completes, the protocol sets ``"lost": True`` in it and calls
its ``"on_lost"`` entry once, when the application has put a callable there (admission
drops a waiting request whose client has gone: nobody would read its answer)."""


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits (see the settings of the same names)."""

    max_header_bytes: int = 16 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    keep_alive_seconds: int = 5
    max_connections: int = 1000


class RefusalLog:
    """One warning per ``interval`` seconds, with a count, for connections refused over
    the cap: a flood of them must not become a flood of log lines."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._refused = 0
        self._last_warning: float | None = None

    def refused(self, logger: logging.Logger, cap: int) -> None:
        self._refused += 1
        now = time.monotonic()
        if self._last_warning is None or now - self._last_warning >= self.interval:
            logger.warning(
                "refused %d connection(s) over DYNANOISE_MAX_CONNECTIONS (%d per process)",
                self._refused,
                cap,
            )
            self._refused = 0
            self._last_warning = now


def protocol_factory(limits: HttpLimits) -> Any:
    """What uvicorn's ``http`` option takes: called like a protocol class. A partial of
    a module-level class, so that it pickles into spawned worker processes (each then
    has its own refusal log)."""
    return functools.partial(BoundedHttpToolsProtocol, limits=limits, refusals=RefusalLog())


_IDLE, _HEAD, _BODY = "idle", "head", "body"


class _HeadHoldingTransport(asyncio.Transport):
    """The connection's transport, holding a response's head back until the next write
    (its first body bytes, or anything else) so that both leave in one ``write``.

    `expect_response(cycle)` names the request whose response comes next: the first
    write after that response has started is its head (uvicorn writes it as soon as
    the application sends ``http.response.start``). `flush` sends a held head on its
    own; `close` flushes first, so no path that ends a connection loses a head.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._held: bytes | None = None
        self._cycle: Any = None  # uvicorn's RequestResponseCycle

    def expect_response(self, cycle: Any) -> None:
        # A pipelined request named while an older response is still being written:
        # that older head, not yet written, then goes out at once, as uvicorn writes it.
        self._cycle = cycle

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            data = b"".join((self._held, data))
            self._held = None
        elif self._cycle is not None and self._cycle.response_started:
            self._held = bytes(data)
            self._cycle = None
            return
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def flush(self) -> None:
        held, self._held = self._held, None
        # A connection already lost (the client left mid-response) takes nothing more.
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


def _counting_starts(app: Any, backlog: RequestBacklog) -> Any:
    """``app``, counting in ``backlog`` each request task that starts running it: with
    the tasks counted as created, what the loop holds for its turn (`RequestBacklog`)."""

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        backlog.started += 1
        await app(scope, receive, send)

    return counted


def _tell_lost(scope: Any) -> None:
    """Mark the request of ``scope`` as abandoned by its client (`ARRIVAL_EXTENSION`)."""
    arrival = scope.get("extensions", {}).get(ARRIVAL_EXTENSION)
    if arrival is None:
        return
    arrival["lost"] = True
    on_lost = arrival.pop("on_lost", None)
    if on_lost is not None:
        on_lost()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `HttpLimits`.

    One deadline per connection, moved as the connection moves on: idle (connected,
    or between requests: uvicorn's keep-alive timer after a response) -> head (from a
    request's first byte to its last header) -> body (until the request is complete)
    -> none while the application answers. Head and body deadlines are armed only
    when a chunk ends inside them: a request that arrives in one read costs no timer.

    Responses are written through `_HeadHoldingTransport`: a head leaves with the first
    body bytes, or on its own when the response completes without any (a HEAD request).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits,
        refusals: RefusalLog | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._refusals = refusals if refusals is not None else RefusalLog()
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_phase: str | None = None
        self._phase_started = 0.0
        self._head_open = False
        self._body_open = False
        self._head_bytes = 0  # url and complete headers of the open head, exactly
        self._head_received = 0  # bytes of chunks that arrived inside the open head
        self._refused: tuple[int, bytes] | None = None
        self._counted_app = _counting_starts(self.app, REQUEST_BACKLOG)

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._writer = _HeadHoldingTransport(transport)
        super().connection_made(self._writer)
        if len(self.connections) > self.limits.max_connections:
            self._refusals.refused(self.logger, self.limits.max_connections)
            self._refuse(503, b"too many connections")
            return
        self._arm(_IDLE, self.limits.keep_alive_seconds, self._idle_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            _tell_lost(cycle.scope)

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused is not None:
                status, message = self._refused
                self._refused = None
                self._refuse(status, message)
                return
            self.logger.debug("Invalid HTTP request received.")
            self._disarm()
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._head_open:
            # The head is still open: it holds all of this chunk (when a pipelined head
            # began inside it, the previous request's tail too: an over-count, never
            # an under-count). Checked per chunk, so the parser never buffers more
            # than the limit and one chunk of a head that streams without end.
            self._head_received += len(data)
            if self._head_received > self.limits.max_header_bytes:
                self._refuse(431, b"request header fields too large")
            elif self._deadline_phase != _HEAD:
                self._arm(
                    _HEAD, self._remaining(self.limits.header_timeout_seconds), self._head_expired
                )
        elif self._body_open and self._deadline_phase != _BODY:
            self._arm(_BODY, self._remaining(self.limits.body_timeout_seconds), self._body_expired)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_bytes = self._head_received = 0
        self._phase_started = self.loop.time()
        self._disarm()  # the idle deadline

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_header_bytes:
            self._stop(414, b"request target too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Exact accounting of complete headers: a chunk may end a head and carry a body.
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.limits.max_header_bytes:
            self._stop(431, b"request header fields too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._body_open = True
        self._phase_started = self.loop.time()
        self._disarm()
        # When the request's task is created (below): admission counts the time it then
        # waits for the event loop against its queue delay (service/api/admission.py).
        extensions = self.scope.setdefault("extensions", {})
        extensions[ARRIVAL_EXTENSION] = {"loop_time": self._phase_started}
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # not an upgrade: a response will follow
            self._writer.expect_response(self.cycle)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # Counted created here and started when it first runs: the loop's backlog, which
        # lets requests of one turn share a model call (service/runtime/batching.py).
        REQUEST_BACKLOG.created += 1
        counted = self._counted_app if app is self.app else _counting_starts(app, REQUEST_BACKLOG)
        super()._start_asgi_task(cycle, counted)

    def on_message_complete(self) -> None:
        self._body_open = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._writer.flush()  # a response with no body bytes (HEAD) still sends its head
        super().on_response_complete()

    # Timers

    def _remaining(self, seconds: float) -> float:
        """What is left of a phase's ``seconds`` since it started."""
        return max(0.0, self._phase_started + seconds - self.loop.time())

    def _arm(self, phase: str, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)
        self._deadline_phase = phase

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self._deadline_phase = None

    def _idle_expired(self) -> None:
        self._deadline = self._deadline_phase = None
        if not self.transport.is_closing():
            self.transport.close()

    def _head_expired(self) -> None:
        self._deadline = self._deadline_phase = None
        self.logger.debug("closing a connection: request head not received in time")
        self._refuse(408, b"request head not received in time")

    def _body_expired(self) -> None:
        self._deadline = self._deadline_phase = None
        cycle = self.cycle
        if cycle is None or not self._body_open or self.transport.is_closing():
            return
        if cycle.waiting_for_100_continue or self.flow.read_paused:
            # The server, not the client, is holding the body back: the application has
            # not asked for it yet (no `100 Continue` sent) or has not consumed it.
            self._arm(_BODY, self.limits.body_timeout_seconds, self._body_expired)
            return
        self.logger.debug("closing a connection: request body not received in time")
        if cycle.response_started:
            self.transport.close()
        else:
            # The application waits in `receive`; the connection's loss answers it.
            self._refuse(408, b"request body not received in time")

    # Answers

    def _stop(self, status: int, message: bytes) -> None:
        """From a parser callback: abandon the request with ``status``."""
        self._refused = (status, message)
        raise _Refused(message.decode())

    def _refuse(self, status: int, message: bytes) -> None:
        """Answer ``status`` with ``message`` and close the connection."""
        self._disarm()
        self._refused = (status, message)
        if self.transport.is_closing():
            return
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(message)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    message,
                ]
            )
        )
        self.transport.close()
