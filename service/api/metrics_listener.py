"""The Prometheus metrics listener: its own port, apart from the inference port.

The metrics carry per-tenant, per-query detail (each request's sensitivity R moves
`dynanoise_sensitivity_sum` by exactly R, label flips, every tenant's name), so they
are never served where clients reach the service. `dynanoise serve` starts this
listener once, in its own process, beside uvicorn (Triton's convention: a metrics
port next to the inference port): with one worker it renders that worker's
instruments, with several it aggregates the workers' multiprocess files, as
`GET /metrics` on the public port did before. With `DYNANOISE_METRICS_TOKEN` set,
a scrape needs `Authorization: Bearer <token>` (compared in constant time).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn
from starlette.types import Receive, Scope, Send

from ..metrics import ServiceMetrics, render_latest
from .middleware import SECURITY_HEADERS
from .status import ErrorStatus, error_body

logger = logging.getLogger("dynanoise.metrics")

METRICS_PATH = "/metrics"
THREAD_NAME = "dynanoise-metrics"
Render = Callable[[], tuple[bytes, str]]
"""Produces the exposition: (body, content type)."""


class MetricsListenerError(RuntimeError):
    """The metrics listener could not bind or start."""


class MetricsApp:
    """ASGI app of the listener: `GET`/`HEAD /metrics` answers the text format; any
    other path or method, or a scrape without the token when one is set, gets the
    service's JSON error (`{"error": {"code", "message"}}`)."""

    def __init__(self, render: Render, token: str | None = None) -> None:
        self.render = render
        self._token = token.encode() if token else None

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # a websocket: refuse it
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["path"] != METRICS_PATH:
            await _error(send, ErrorStatus(404, "not_found", "Not Found"))
            return
        if scope["method"] not in ("GET", "HEAD"):
            status = ErrorStatus(405, "method_not_allowed", "Method Not Allowed")
            await _error(send, status, [(b"allow", b"GET, HEAD")])
            return
        if not self._authorized(scope):
            status = ErrorStatus(401, "unauthorized", "missing or invalid metrics token")
            await _error(send, status, [(b"www-authenticate", b'Bearer realm="metrics"')])
            return
        try:
            body, content_type = self.render()
        except Exception:
            logger.exception("rendering the metrics failed")
            await _error(send, ErrorStatus(500, "internal_error", "internal error"))
            return
        await _respond(send, 200, body, content_type.encode(), head=scope["method"] == "HEAD")

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self._token
                )
        return False


def metrics_app(metrics: ServiceMetrics | None, token: str | None = None) -> MetricsApp:
    """The listener's app over ``metrics`` (one process), or over the worker files
    of PROMETHEUS_MULTIPROC_DIR (several workers; ``metrics`` None)."""
    return MetricsApp(lambda: render_latest(metrics), token)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _error(
    send: Send, status: ErrorStatus, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _respond(send, status.status, error_body(status), b"application/json", extra)


class MetricsServer:
    """The listener, served by uvicorn on an event loop in a daemon thread of the
    calling process. The socket is bound in the constructor, so a port in use fails
    `dynanoise serve` before any worker starts; it is not inheritable, so worker
    processes never hold it. ``port`` 0 binds a free port (tests): see ``self.port``."""

    def __init__(
        self, app: MetricsApp, host: str, port: int, *, log_level: str | None = None
    ) -> None:
        self.host = host
        self.app = app
        self._socket = _bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            ws="none",
            loop="asyncio",
            http="h11",
            log_config=None,  # the main server configures logging; do not redo it here
            log_level=log_level,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        _quiet_uvicorn_in_listener_thread()
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=THREAD_NAME,
            daemon=True,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{METRICS_PATH}"

    def start(self, timeout: float = 10.0) -> MetricsServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                self._socket.close()
                raise MetricsListenerError(f"the metrics listener on {self.url} did not start")
            time.sleep(0.01)
        logger.info(
            "metrics on %s%s",
            self.url,
            " (bearer token required)" if self.app.requires_token else "",
        )
        if not self.app.requires_token and not _is_loopback(self.host):
            logger.warning(
                "the metrics listener on %s has no token: whoever reaches this port reads "
                "per-tenant, per-query metrics; set DYNANOISE_METRICS_TOKEN or keep the "
                "port off the clients' network",
                self.url,
            )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let a scrape in progress finish, join the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _ListenerInfo(logging.Filter):
    """Drops uvicorn's INFO lines from the listener's thread ("Started server process
    [pid]", "Shutting down"): in the log they would read as a second inference
    server. Its warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.threadName != THREAD_NAME


def _quiet_uvicorn_in_listener_thread() -> None:
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ListenerInfo) for f in uvicorn_logger.filters):
        uvicorn_logger.addFilter(_ListenerInfo())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MetricsListenerError(f"cannot listen for metrics on {host}:{port}: {exc}") from exc
    return sock
