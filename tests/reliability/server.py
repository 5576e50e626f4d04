"""A real `dynanoise serve` process for fault tests: its handle, exit status and output
(written to a file, so a chatty server can never block on a full pipe)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..live import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for the exit; kill only if it hangs past ``timeout``."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def server_env(
    models_dir: Path, database_url: str, port: int, admin_token: str, workers: int
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DYNANOISE_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "DYNANOISE_MODELS_DIR": str(models_dir),
            "DYNANOISE_DATABASE_URL": database_url,
            "DYNANOISE_ADMIN_TOKEN": admin_token,
            "DYNANOISE_HOST": "127.0.0.1",
            "DYNANOISE_PORT": str(port),
            "DYNANOISE_WORKERS": str(workers),
            "DYNANOISE_CREATE_DEMO_TENANT": "false",
            "DYNANOISE_TENANT_CACHE_SECONDS": "0",
        }
    )
    return env


def start_server(
    workdir: Path,
    *,
    models_dir: Path,
    database_url: str,
    admin_token: str = "reliability-admin",
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 60.0,
) -> ServerProcess:
    """Start `python -m service.cli serve` on a free loopback port (cwd ``workdir``)."""
    port = free_port()
    env = server_env(models_dir, database_url, port, admin_token, workers)
    env.update(extra_env or {})
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, port, log_path)
    if wait_ready:
        _wait_until_serving(server, timeout)
    return server


@contextmanager
def running_server(workdir: Path, **options: object) -> Iterator[ServerProcess]:
    server = start_server(workdir, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def _wait_until_serving(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode}:\n{server.output()[-3000:]}"
            )
        try:
            if httpx.get(f"{server.url}/v2/health/live", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.process.kill()
    raise TimeoutError(f"server on port {server.port} not serving after {timeout} s")


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
