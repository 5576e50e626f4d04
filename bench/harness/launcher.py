"""The one way tests and benchmarks start a server process on loopback.

A free port, an environment, the server's output in a log file (a chatty server can
never block on a full pipe), a readiness poll that fails fast when the process dies,
and a stop that sends SIGTERM and kills only what hangs. ``start_service`` runs
`python -m service.cli serve` from this checkout (PYTHONPATH set, the caller's
settings only); ``start_process`` runs anything else (the benchmark's rivals, an
installed `dynanoise` in a clean virtual environment).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
READY = "/v2/health/ready"
LIVE = "/v2/health/live"


class ServerError(RuntimeError):
    """A server exited, did not answer in time, or did not stop."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A started server: its process, where it listens, its log, and (for the
    benchmark) API keys by tenant."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)
    process_group: bool = False  # started in a session of its own: signals go to the group
    metrics_port: int | None = None  # `dynanoise serve`'s metrics listener, when it has one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.process_group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0, *, strict: bool = True) -> int:
        """SIGTERM, wait for the exit status; past ``timeout``, kill, then raise
        ServerError (``strict``) or return the killed process's status."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            if strict:
                raise ServerError(
                    f"server on port {self.port} did not stop within {timeout:.0f} s"
                ) from None
            return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
        self.process.wait()

    def wait_ready(self, path: str = READY, timeout: float = 60.0) -> None:
        """Poll ``path`` until it answers 200; ServerError (process killed) otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"server exited with {self.process.returncode}:\n{self.output()[-3000:]}"
                )
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise ServerError(
            f"{self.url}{path} not ready after {timeout:.0f} s:\n{self.output()[-3000:]}"
        )

    def rss_mb(self) -> float:
        """Resident memory of the server's process tree, in MiB."""
        return tree_rss_bytes(self.process.pid) / 2**20

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server's process tree so far (processes
        that have exited no longer count)."""
        return tree_cpu_seconds(self.process.pid)


def start_process(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    workdir: Path,
    port: int,
    ready_path: str | None = READY,
    timeout: float = 60.0,
    new_session: bool = False,
) -> ServerProcess:
    """Run ``command`` (which listens on ``port``) in ``workdir``, its output in
    ``workdir/server-<port>.log``; wait until ``ready_path`` answers 200 unless None.
    ``new_session``: its own process group, so its workers get its signals."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=workdir,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    server = ServerProcess(process, port, log_path, process_group=new_session)
    if ready_path is not None:
        server.wait_ready(ready_path, timeout)
    return server


@contextmanager
def running(
    server: ServerProcess, *, stop_timeout: float = 60.0, strict: bool = True
) -> Iterator[ServerProcess]:
    """Yield ``server``; stop it afterwards (see ``ServerProcess.stop``)."""
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop(stop_timeout, strict=strict)


def with_checkout_on_path(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this checkout first on PYTHONPATH: `service` and `bench` import from
    it whatever the working directory, installed or not."""
    existing = env.get("PYTHONPATH")
    path = str(REPO_ROOT) if not existing else os.pathsep.join([str(REPO_ROOT), existing])
    return {**env, "PYTHONPATH": path}


def service_env(
    *,
    models_dir: Path,
    database_url: str,
    port: int,
    workers: int = 1,
    admin_token: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of `dynanoise serve` from this checkout: this process's
    environment without any service setting (DYNANOISE_<setting>) or Prometheus
    multiprocess directory, then the caller's settings. Other variables pass
    (PATH, DYNANOISE_PURE_PYTHON, ...)."""
    from service.settings import Settings

    settings = {f"DYNANOISE_{name.upper()}" for name in Settings.model_fields}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in settings and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        {
            "DYNANOISE_MODELS_DIR": str(models_dir),
            "DYNANOISE_DATABASE_URL": database_url,
            "DYNANOISE_HOST": "127.0.0.1",
            "DYNANOISE_PORT": str(port),
            # A port of its own for a metrics listener too: servers started side by side
            # (replicas, the benchmark's two services) never race for a fixed one.
            "DYNANOISE_METRICS_PORT": str(free_port()),
            "DYNANOISE_WORKERS": str(workers),
            "DYNANOISE_CREATE_DEMO_TENANT": "false",
        }
    )
    if admin_token is not None:
        env["DYNANOISE_ADMIN_TOKEN"] = admin_token
    env.update(extra or {})
    return with_checkout_on_path(env)


def start_service(
    workdir: Path,
    *,
    models_dir: Path,
    database_url: str,
    workers: int = 1,
    admin_token: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    ready_path: str | None = READY,
    timeout: float = 60.0,
) -> ServerProcess:
    """`python -m service.cli serve` from this checkout on a free loopback port."""
    port = free_port()
    env = service_env(
        models_dir=models_dir,
        database_url=database_url,
        port=port,
        workers=workers,
        admin_token=admin_token,
        extra=extra_env,
    )
    command = [sys.executable, "-m", "service.cli", "serve"]
    server = start_process(
        command, env=env, workdir=workdir, port=port, ready_path=ready_path, timeout=timeout
    )
    server.metrics_port = int(env["DYNANOISE_METRICS_PORT"])
    return server


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


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its live descendants ([] when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    total = 0.0
    for process in process_tree(pid):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue  # it ended meanwhile
        total += times.user + times.system
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
