"""A real `dynanoise serve` process for fault tests (the shared launcher,
bench/harness/launcher.py, with this suite's defaults: its admin token, no tenant
cache, ready once /v2/health/live answers), and raw-socket helpers that hold a
request in flight."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness.launcher import LIVE, ServerProcess, free_port, running, service_env
from bench.harness.launcher import start_service as _start_service

__all__ = [
    "ServerProcess",
    "finish_request",
    "running_server",
    "send_request_head",
    "server_env",
    "start_server",
]

ADMIN_TOKEN = "reliability-admin-token-of-32-characters-or-more"
TEST_SETTINGS = {"DYNANOISE_TENANT_CACHE_SECONDS": "0"}


def server_env(
    models_dir: Path, database_url: str, port: int, admin_token: str, workers: int
) -> dict[str, str]:
    """The environment `start_server` gives `dynanoise serve`."""
    return service_env(
        models_dir=models_dir,
        database_url=database_url,
        port=port,
        workers=workers,
        admin_token=admin_token,
        extra=TEST_SETTINGS,
    )


def start_server(
    workdir: Path,
    *,
    models_dir: Path,
    database_url: str,
    admin_token: str = ADMIN_TOKEN,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 60.0,
) -> ServerProcess:
    """Start `python -m service.cli serve` on a free loopback port (cwd ``workdir``)."""
    return _start_service(
        workdir,
        models_dir=models_dir,
        database_url=database_url,
        admin_token=admin_token,
        workers=workers,
        # Its own metrics port (not 8002): servers run side by side.
        extra_env={
            **TEST_SETTINGS,
            "DYNANOISE_METRICS_PORT": str(free_port()),
            **(extra_env or {}),
        },
        ready_path=LIVE if wait_ready else None,
        timeout=timeout,
    )


@contextmanager
def running_server(workdir: Path, **options: object) -> Iterator[ServerProcess]:
    with running(start_server(workdir, **options)) as server:  # type: ignore[arg-type]
        yield server


def send_request_head(
    port: int, path: str, headers: dict[str, str], body_length: int
) -> socket.socket:
    """Open a connection and send a POST's head with `Expect: 100-continue`; return once
    the server answers `100 Continue`, i.e. once the application is reading the body.
    The request is then provably in flight until the caller sends the body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {body_length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Expect: 100-continue")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    interim = _read_until(sock, b"\r\n\r\n")
    if not interim.startswith(b"HTTP/1.1 100"):
        sock.close()
        raise AssertionError(f"expected 100 Continue, got {interim[:200]!r}")
    return sock


def finish_request(sock: socket.socket, body: bytes) -> tuple[int, bytes]:
    """Send the body, read the whole response (the server closes the connection
    while it shuts down, or we read by Content-Length)."""
    sock.sendall(body)
    head = _read_until(sock, b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    rest = head.split(b"\r\n\r\n", 1)[1]
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    sock.close()
    return status, rest


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
