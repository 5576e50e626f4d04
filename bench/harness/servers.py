"""Servers under test, each started as its own process on loopback and stopped after
(through the shared launcher, ``launcher.py``):

- the service (`dynanoise serve`, one worker) with tenants for defense on / off / keyed;
- the peers (``PEERS``): the naive FastAPI + pydantic app (``naive_app``), KServe,
  MLServer, LitServe and BentoML (``peers/``, each from its own virtual environment
  under bench/.venvs/), and the framework floor (``floor_app``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
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
    "PEERS",
    "TENANT_PARAMS",
    "Peer",
    "ServerError",
    "ServerProcess",
    "bentoml_server",
    "create_tenants",
    "floor_server",
    "kserve_server",
    "litserve_server",
    "mlserver_server",
    "naive_server",
    "peer_server",
    "service_server",
]

PEERS_DIR = Path(__file__).with_name("peers")
BENTOML_FILE = PEERS_DIR / "bentoml_peer.py"


@dataclass(frozen=True)
class Peer:
    """A server the service is compared with: what it is, where its venv is (None: the
    service's own), and how it is asked (its protocol's body, its predict route)."""

    name: str
    venv: str | None
    protocol: str  # "v1": {"instances": [[...]]}; "v2": Open Inference Protocol JSON
    path: str  # the predict route; {model} is the model's name
    description: str


PEERS: tuple[Peer, ...] = (
    Peer("kserve", "kserve", "v1", "/v1/models/{model}:predict",
         "KServe `ModelServer` (Python), a `kserve.Model` subclass, v1 `:predict`, one "
         "worker, gRPC off, access log off (`peers/kserve_peer.py`)"),
    Peer("mlserver", "mlserver", "v2", "/v2/models/{model}/infer",
         "MLServer, a custom runtime (`MLModel`) over the Open Inference Protocol, "
         "`parallel_workers: 0`, debug (access log) off, no metrics endpoint, no gzip "
         "(`peers/mlserver_peer.py`)"),
    Peer("litserve", "litserve", "v1", "/predict",
         "LitServe, a `LitAPI`, one API server and one worker, access log off "
         "(`peers/litserve_peer.py`)"),
    Peer("bentoml", "bentoml", "v1", "/predict",
         "BentoML, `@bentoml.service(workers=1)` with an `np.ndarray` float32 input, access "
         "log and metrics off (`peers/bentoml_peer.py`)"),
    Peer("naive", None, "v1", "/predict",
         "FastAPI + a pydantic request model (`list[list[float]]`), a sync endpoint, a "
         "pydantic response model, under uvicorn, access log off (`naive_app.py`)"),
    Peer("floor", None, "v1", "/",
         "the framework floor: a bare ASGI app under the service's own uvicorn settings, "
         "reading the body and answering the service's recorded one-row answer "
         "(`floor_app.py`)"),
)  # fmt: skip

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
    models_dir: Path,
    work_dir: Path,
    *,
    batching_max_delay_ms: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    tag: str = "service",
) -> Iterator[ServerProcess]:
    """`dynanoise serve` with one worker and the bench tenants, in its default settings
    but for ``batching_max_delay_ms`` (when given) and ``extra_env``."""
    directory = work_dir / tag
    directory.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{directory / 'tenants.db'}"
    keys = create_tenants(database_url)
    env = {
        "DYNANOISE_LOG_LEVEL": "warning",
        # The "off" tenant (base_variance 0) answers clean probabilities: a server
        # refuses to serve it unless told this is a benchmark.
        "DYNANOISE_ALLOW_CLEAN_OUTPUTS": "true",
        **(extra_env or {}),
    }
    if batching_max_delay_ms is not None:
        env["DYNANOISE_BATCHING_MAX_DELAY_MS"] = str(batching_max_delay_ms)
    server = start_service(
        directory, models_dir=models_dir, database_url=database_url, extra_env=env
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
    """``bentoml serve`` of peers/bentoml_peer.py with its venv's interpreter."""
    port = free_port()
    env = _peer_env(
        model_dir,
        BENTOML_HOME=str(work_dir / "bentoml-home"),
        BENTOML_DO_NOT_TRACK="True",
    )
    command = [
        str(python), "-m", "bentoml", "serve", f"{BENTOML_FILE.stem}:Classifier",
        "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(BENTOML_FILE.parent),
    ]  # fmt: skip
    server = start_process(
        command, env=env, workdir=work_dir, port=port, ready_path="/readyz", timeout=120.0
    )
    with running(server, stop_timeout=20.0, strict=False):
        yield server


def _peer_env(model_dir: Path, **extra: str) -> dict[str, str]:
    """A peer's environment: ours without a venv or Python path of ours (its
    interpreter is its venv's), the peers' folder importable, the model directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(PEERS_DIR), "BENCH_MODEL_DIR": str(model_dir), **extra}


@contextmanager
def floor_server(answer: bytes, work_dir: Path) -> Iterator[ServerProcess]:
    """The framework floor (``floor_app``) answering ``answer`` to every request."""
    port = free_port()
    answer_file = work_dir / "floor-answer.json"
    work_dir.mkdir(parents=True, exist_ok=True)
    answer_file.write_bytes(answer)
    # The service's settings only (defaults), as `dynanoise serve` gets them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNANOISE_")}
    command = [sys.executable, "-m", "bench.harness.floor_app", "--port", str(port),
               "--answer", str(answer_file)]  # fmt: skip
    server = start_process(
        command, env=with_checkout_on_path(env), workdir=work_dir, port=port, ready_path="/"
    )
    with running(server, stop_timeout=20.0, strict=False):
        yield server


@contextmanager
def mlserver_server(
    python: Path, model_dir: Path, work_dir: Path, model: str
) -> Iterator[ServerProcess]:
    """``mlserver start`` of a repository holding ``model`` (peers/mlserver_peer.py)."""
    port = free_port()
    root = work_dir / "mlserver"
    (root / model).mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,  # MLServer's access log follows debug
        "parallel_workers": 0,  # inference in the server process, no worker pool
        "metrics_endpoint": None,  # no metrics server, no metrics middleware
        "gzip_enabled": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
    }
    (root / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": model,
        "implementation": "mlserver_peer.OnnxRuntime",
        "parameters": {"uri": str(model_dir)},
    }
    (root / model / "model-settings.json").write_text(json.dumps(model_settings))
    command = [str(python.parent / "mlserver"), "start", str(root)]
    server = start_process(
        command,
        env=_peer_env(model_dir),
        workdir=work_dir,
        port=port,
        ready_path=f"/v2/models/{model}/ready",
        timeout=120.0,
    )
    with running(server, stop_timeout=20.0, strict=False):
        yield server


@contextmanager
def kserve_server(
    python: Path, model_dir: Path, work_dir: Path, model: str
) -> Iterator[ServerProcess]:
    """KServe's Python ``ModelServer`` serving peers/kserve_peer.py's model."""
    port = free_port()
    command = [str(python), str(PEERS_DIR / "kserve_peer.py"), "--model_name", model,
               "--http_port", str(port), "--grpc_port", str(free_port()),
               "--enable_grpc", "false", "--workers", "1"]  # fmt: skip
    server = start_process(
        command,
        env=_peer_env(model_dir),
        workdir=work_dir,
        port=port,
        ready_path=f"/v1/models/{model}",
        timeout=120.0,
    )
    with running(server, stop_timeout=20.0, strict=False):
        yield server


@contextmanager
def litserve_server(python: Path, model_dir: Path, work_dir: Path) -> Iterator[ServerProcess]:
    """LitServe serving peers/litserve_peer.py's ``LitAPI``."""
    port = free_port()
    command = [str(python), str(PEERS_DIR / "litserve_peer.py"), "--port", str(port)]
    server = start_process(
        command,
        env=_peer_env(model_dir),
        workdir=work_dir,
        port=port,
        ready_path="/health",
        timeout=120.0,
        new_session=True,  # LitServe's API server and inference worker are child processes
    )
    with running(server, stop_timeout=20.0, strict=False):
        yield server


def peer_server(
    peer: Peer,
    *,
    python: Path | None,
    model_dir: Path,
    model: str,
    work_dir: Path,
    floor_answer: bytes,
) -> AbstractContextManager[ServerProcess]:
    """Start ``peer`` (its venv's ``python`` for the peers that have one)."""
    directory = work_dir / peer.name
    if peer.venv is None:
        if peer.name == "floor":
            return floor_server(floor_answer, directory)
        return naive_server(model_dir, directory)
    if python is None:
        raise ServerError(f"{peer.name}: no virtual environment (make bench-venvs)")
    if peer.name == "mlserver":
        return mlserver_server(python, model_dir, directory, model)
    if peer.name == "kserve":
        return kserve_server(python, model_dir, directory, model)
    if peer.name == "litserve":
        return litserve_server(python, model_dir, directory)
    return bentoml_server(python, model_dir, directory)
