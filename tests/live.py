"""A real `dynanoise serve` process on a free loopback port, for tests that need a
live server (interop clients, several workers, several replicas); started by the
launcher the benchmarks use (bench/harness/launcher.py)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.harness.launcher import free_port, running, start_service

__all__ = ["live_server"]


@contextmanager
def live_server(
    *,
    models_dir: Path,
    database_url: str,
    admin_token: str = "live-admin-token-of-32-characters-or-more",
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
) -> Iterator[str]:
    """Yield the base URL of a running server (ready: /v2/health/ready); stop it
    (SIGTERM) afterwards. It runs in ``cwd``, or a temporary directory, with its log."""
    with ExitStack() as stack:
        workdir = cwd or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="live-")))
        server = start_service(
            workdir,
            models_dir=models_dir,
            database_url=database_url,
            admin_token=admin_token,
            workers=workers,
            extra_env={
                "DYNANOISE_TENANT_CACHE_SECONDS": "0",
                # Its own metrics port (not 8002): servers run side by side.
                "DYNANOISE_METRICS_PORT": str(free_port()),
                **(extra_env or {}),
            },
            timeout=timeout,
        )
        with running(server, stop_timeout=20.0, strict=False):
            yield server.url
