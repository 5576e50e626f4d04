"""Servers under test, each started as its own process on loopback and stopped after.

- the service (`dynanoise serve`, one worker) with tenants for defense on / off / keyed;
- the naive FastAPI + pydantic app (``naive_app``);
- the same model under BentoML, from the benchmark's own virtual environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..defense import DefenseParams, NoiseMode
from ..tenants import TenantStore

BENTOML_FILE = Path(__file__).with_name("bentoml_service.py")

# "off" cannot skip the defense (the service never returns clean probabilities): it is
# the same code path with no noise (base_variance 0) and no smoothing (temperature 1).
TENANT_PARAMS: dict[str, DefenseParams] = {
    "on": DefenseParams(),
    "off": DefenseParams(base_variance=0.0, temperature=1.0),
    "keyed": DefenseParams(noise_mode=NoiseMode.KEYED),
}


class ServerError(RuntimeError):
    """A server did not start or answer."""


@dataclass
class RunningServer:
    """A started server: where it listens, its process, and API keys by tenant."""

    url: str
    process: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)

    def rss_mb(self) -> float:
        """Resident memory of the server's process tree, in MiB."""
        return tree_rss_bytes(self.process.pid) / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def create_tenants(database_url: str) -> dict[str, str]:
    """The bench tenants (see TENANT_PARAMS) in a fresh database; their API keys."""
    store = TenantStore(database_url)
    try:
        store.migrate()
        return {name: store.create(name, params)[1] for name, params in TENANT_PARAMS.items()}
    finally:
        store.close()


@contextmanager
def service_server(
    models_dir: Path, work_dir: Path, *, batching_max_delay_ms: float = 0.0, tag: str = "service"
) -> Iterator[RunningServer]:
    """`dynanoise serve` with one worker and the bench tenants."""
    directory = work_dir / tag
    directory.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{directory / 'tenants.db'}"
    keys = create_tenants(database_url)
    port = free_port()
    env = {
        **os.environ,
        "DYNANOISE_MODELS_DIR": str(models_dir),
        "DYNANOISE_DATABASE_URL": database_url,
        "DYNANOISE_HOST": "127.0.0.1",
        "DYNANOISE_PORT": str(port),
        "DYNANOISE_WORKERS": "1",
        "DYNANOISE_CREATE_DEMO_TENANT": "false",
        "DYNANOISE_LOG_LEVEL": "warning",
        "DYNANOISE_BATCHING_MAX_DELAY_MS": str(batching_max_delay_ms),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "service.cli", "serve"]
    with _process(command, env, directory, f"http://127.0.0.1:{port}", "/v2/health/ready") as s:
        s.keys = keys
        yield s


@contextmanager
def naive_server(model_dir: Path, work_dir: Path) -> Iterator[RunningServer]:
    """The naive FastAPI + pydantic app under uvicorn, one worker."""
    port = free_port()
    env = {**os.environ, "NAIVE_MODEL_DIR": str(model_dir)}
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "service.bench.naive_app:app_from_env",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with _process(command, env, work_dir, f"http://127.0.0.1:{port}", "/openapi.json") as s:
        yield s


@contextmanager
def bentoml_server(python: Path, model_dir: Path, work_dir: Path) -> Iterator[RunningServer]:
    """``bentoml serve`` of bentoml_service.py with the bench venv's interpreter."""
    port = free_port()
    env = {
        **os.environ,
        "BENCH_MODEL_DIR": str(model_dir),
        "BENTOML_HOME": str(work_dir / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    env.pop("VIRTUAL_ENV", None)
    command = [
        str(python), "-m", "bentoml", "serve", f"{BENTOML_FILE.stem}:Classifier",
        "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(BENTOML_FILE.parent),
    ]  # fmt: skip
    with _process(
        command, env, work_dir, f"http://127.0.0.1:{port}", "/readyz", timeout_s=120.0
    ) as s:
        yield s


@contextmanager
def _process(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    url: str,
    ready_path: str,
    *,
    timeout_s: float = 60.0,
) -> Iterator[RunningServer]:
    cwd.mkdir(parents=True, exist_ok=True)
    log = (cwd / f"server-{url.rsplit(':', 1)[1]}.log").open("wb")
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url + ready_path, process, timeout_s, Path(log.name))
        yield RunningServer(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"server exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise ServerError(f"{url} not ready after {timeout_s:.0f} s: {log.read_text()[-3000:]}")


def tree_rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants (Linux /proc), in bytes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += process_rss_bytes(current)
        stack.extend(children.get(current, []))
    return total


def process_rss_bytes(pid: int) -> int:
    """VmRSS of one process, in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
