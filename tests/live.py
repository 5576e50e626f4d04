"""Start a real `dynanoise serve` process on a free loopback port, for tests that
need a live server (interop clients, several workers, several replicas)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def live_server(
    *,
    models_dir: Path,
    database_url: str,
    admin_token: str = "live-admin",
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
) -> Iterator[str]:
    """Yield the base URL of a running server; stop it (SIGTERM) afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "DYNANOISE_MODELS_DIR": str(models_dir),
        "DYNANOISE_DATABASE_URL": database_url,
        "DYNANOISE_ADMIN_TOKEN": admin_token,
        "DYNANOISE_PORT": str(port),
        "DYNANOISE_HOST": "127.0.0.1",
        "DYNANOISE_WORKERS": str(workers),
        "DYNANOISE_CREATE_DEMO_TENANT": "false",
        "DYNANOISE_TENANT_CACHE_SECONDS": "0",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra_env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, timeout)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{output[-3000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")
