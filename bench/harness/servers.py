"""Servers under test, each started as its own process on loopback and stopped after
(through the shared launcher, ``launcher.py``):

- the service (`dynanoise serve`, one worker) with tenants for defense on / off / keyed;
- the naive FastAPI + pydantic app (``naive_app``);
- the same model under BentoML, from the benchmark's own virtual environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.defense import DefenseParams, NoiseMode
from service.tenants import TenantStore

from .launcher import (
    ServerError,
    ServerProcess,
    free_port,
    running,
    start_process,
    start_service,
    with_checkout_on_path,
)

__all__ = [
    "TENANT_PARAMS",
    "ServerError",
    "ServerProcess",
    "bentoml_server",
    "create_tenants",
    "naive_server",
    "service_server",
]

BENTOML_FILE = Path(__file__).with_name("bentoml_service.py")

# "off" cannot skip the defense (the service never returns clean probabilities): it is
# the same code path with no noise (base_variance 0) and no smoothing (temperature 1).
TENANT_PARAMS: dict[str, DefenseParams] = {
    "on": DefenseParams(),
    "off": DefenseParams(base_variance=0.0, temperature=1.0),
    "keyed": DefenseParams(noise_mode=NoiseMode.KEYED),
}


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
) -> Iterator[ServerProcess]:
    """`dynanoise serve` with one worker and the bench tenants."""
    directory = work_dir / tag
    directory.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{directory / 'tenants.db'}"
    keys = create_tenants(database_url)
    server = start_service(
        directory,
        models_dir=models_dir,
        database_url=database_url,
        extra_env={
            "DYNANOISE_LOG_LEVEL": "warning",
            "DYNANOISE_BATCHING_MAX_DELAY_MS": str(batching_max_delay_ms),
            # The "off" tenant (base_variance 0) answers clean probabilities: a server
            # refuses to serve it unless told this is a benchmark.
            "DYNANOISE_ALLOW_CLEAN_OUTPUTS": "true",
        },
    )
    server.keys = keys
    with running(server, stop_timeout=20.0, strict=False):
        yield server


@contextmanager
def naive_server(model_dir: Path, work_dir: Path) -> Iterator[ServerProcess]:
    """The naive FastAPI + pydantic app under uvicorn, one worker."""
    port = free_port()
    env = with_checkout_on_path({**os.environ, "NAIVE_MODEL_DIR": str(model_dir)})
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.harness.naive_app:app_from_env",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    server = start_process(
        command, env=env, workdir=work_dir, port=port, ready_path="/openapi.json"
    )
    with running(server, stop_timeout=20.0, strict=False):
        yield server


@contextmanager
def bentoml_server(python: Path, model_dir: Path, work_dir: Path) -> Iterator[ServerProcess]:
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
    server = start_process(
        command, env=env, workdir=work_dir, port=port, ready_path="/readyz", timeout=120.0
    )
    with running(server, stop_timeout=20.0, strict=False):
        yield server
