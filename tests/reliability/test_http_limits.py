"""The HTTP server's limits against hostile clients, on a real `dynanoise serve`: heads
over DYNANOISE_MAX_HEADER_BYTES are refused (431/414) without the server's memory
growing, slowloris heads and bodies and idle connections are closed on their deadlines,
and a process holds at most DYNANOISE_MAX_CONNECTIONS connections."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from ..onnx_factory import write_linear_model
from .server import ADMIN_TOKEN, ServerProcess, running_server

HEAD_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
KEEP_ALIVE = 1
MAX_CONNECTIONS = 6
SLACK = 2.5  # a busy CI machine's scheduling, on top of the deadline


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("http-limits")
    write_linear_model(root / "models", name="toy", n_features=4, n_classes=3, seed=0)
    with running_server(
        root,
        models_dir=root / "models",
        database_url=f"sqlite:///{root / 'tenants.db'}",
        extra_env={
            "DYNANOISE_MAX_HEADER_BYTES": str(16 * 1024),
            "DYNANOISE_HEADER_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
            "DYNANOISE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
            "DYNANOISE_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
            "DYNANOISE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        },
    ) as running:
        yield running


def _connect(server: ServerProcess, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _send_all(sock: socket.socket, data: bytes) -> None:
    """Send what the server takes; it may close mid-way (that is the point)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _status(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


LIVE_HEAD = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"

OVERSIZED_HEADS: dict[str, tuple[bytes, int]] = {
    "one 70 KB header": (LIVE_HEAD + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    "5,000 small headers": (
        LIVE_HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n",
        431,
    ),
    "a 70 KB request target": (
        b"GET /v2/health/live?" + b"q" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        414,
    ),
}


@pytest.mark.parametrize("case", list(OVERSIZED_HEADS))
def test_a_head_over_the_limit_is_refused_and_the_connection_closed(
    server: ServerProcess, case: str
) -> None:
    head, status = OVERSIZED_HEADS[case]
    with _connect(server) as sock:
        _send_all(sock, head)
        assert _status(_read_to_close(sock)) == status


def test_a_head_that_streams_without_end_does_not_grow_the_servers_memory(
    server: ServerProcess,
) -> None:
    """The probe's 288 MB of headers raised RSS by 210 MB and got a 200: now each
    endless head is cut at the limit, and memory stays where it was."""
    before = server.rss_mb()
    chunk = b"b" * 65536
    for _ in range(8):
        with _connect(server) as sock:
            _send_all(sock, LIVE_HEAD + b"X-Endless: ")
            sent = 0
            try:
                while sent < 32 * 2**20:  # 32 MiB each: far more than the kernel buffers
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            assert sent < 32 * 2**20, "the server read a 32 MiB head to the end"
    assert server.rss_mb() - before < 20
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.settimeout(seconds)
    response = _read_to_close(sock)
    return response, time.monotonic() - started


def test_a_slowloris_head_is_answered_408_and_closed_after_the_header_timeout(
    server: ServerProcess,
) -> None:
    with _connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        try:  # one header line every 0.3 s: each byte resets no timer
            while time.monotonic() - started < HEAD_TIMEOUT + SLACK:
                sock.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.3)
        except OSError:
            pass
        response, _ = _closed_within(sock, SLACK)
        assert _status(response) == 408
        assert time.monotonic() - started < HEAD_TIMEOUT + 2 * SLACK


def test_a_slow_body_is_answered_408_and_closed_after_the_body_timeout(
    server: ServerProcess,
) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /admin/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        response, took = _closed_within(sock, BODY_TIMEOUT + SLACK)
    assert _status(response) == 408
    assert BODY_TIMEOUT - 0.5 < took < BODY_TIMEOUT + SLACK


@pytest.mark.parametrize(
    "first_bytes",
    [b"", LIVE_HEAD + b"\r\n"],
    ids=["connected, never sent a byte", "idle after a response"],
)
def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    server: ServerProcess, first_bytes: bytes
) -> None:
    with _connect(server) as sock:
        sock.sendall(first_bytes)
        response, took = _closed_within(sock, KEEP_ALIVE + SLACK)
    assert took < KEEP_ALIVE + SLACK
    assert (_status(response) == 200) if first_bytes else (response == b"")


def test_connections_over_the_cap_are_answered_503_and_closed(server: ServerProcess) -> None:
    sockets = [_connect(server) for _ in range(MAX_CONNECTIONS + 4)]
    try:
        time.sleep(0.3)
        answers = []
        for sock in sockets:
            sock.settimeout(0.2)
            try:
                answers.append(sock.recv(64))
            except TimeoutError:
                answers.append(b"")  # held open, waiting for a request
        refused = [a for a in answers if _status(a) == 503]
        held = [a for a in answers if a == b""]
        assert len(held) <= MAX_CONNECTIONS and len(refused) >= 4, answers
    finally:
        for sock in sockets:
            sock.close()
    _eventually(lambda: httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200)


def test_ordinary_requests_with_bodies_and_keep_alive_still_work(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for name in ("limits-a", "limits-b"):  # one connection, kept alive
            response = client.post("/admin/tenants", json={"name": name}, headers=admin)
            assert response.status_code == 201, response.text
        big_but_allowed = {"X-Filler": "f" * 8000, **admin}
        assert client.get("/admin/tenants", headers=big_but_allowed).status_code == 200


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_settings_are_documented_with_their_defaults() -> None:
    from service.settings import Settings

    fields = Settings.model_fields
    for name in (
        "max_header_bytes",
        "header_timeout_seconds",
        "body_timeout_seconds",
        "keep_alive_seconds",
        "max_connections",
    ):
        assert fields[name].description, name
    assert 8 * 1024 <= Settings().max_header_bytes <= 16 * 1024
