"""`dynanoise serve`: migrate the store, create the demo tenant on first start, run uvicorn,
and beside it the metrics listener on its own port."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import ValidationError

from ..runtime import ModelLoadError
from ..settings import Settings
from ..tenants import TenantExists, TenantStore

if TYPE_CHECKING:
    from ..metrics import ServiceMetrics

DEMO_TENANT = "demo"
DEMO_KEY_FILE = Path("data/demo_api_key")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("serve", help="start the inference service")
    p.add_argument("--host", help="bind address (DYNANOISE_HOST)")
    p.add_argument("--port", type=int, help="port (DYNANOISE_PORT)")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (DYNANOISE_WORKERS)")
    p.add_argument(
        "--metrics-port", type=int, help="metrics listener port, 0 = off (DYNANOISE_METRICS_PORT)"
    )
    p.add_argument("--models-dir", help="directory of models (DYNANOISE_MODELS_DIR)")
    p.add_argument("--database-url", help="tenant store URL (DYNANOISE_DATABASE_URL)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Worker processes rebuild Settings from the environment, so CLI overrides go there.
    for option, env in (
        ("host", "DYNANOISE_HOST"),
        ("port", "DYNANOISE_PORT"),
        ("workers", "DYNANOISE_WORKERS"),
        ("metrics_port", "DYNANOISE_METRICS_PORT"),
        ("models_dir", "DYNANOISE_MODELS_DIR"),
        ("database_url", "DYNANOISE_DATABASE_URL"),
    ):
        value = getattr(args, option)
        if value is not None:
            os.environ[env] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"dynanoise: invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    from ..api.metrics_listener import MetricsListenerError

    try:
        return serve(settings)
    except (ModelLoadError, MetricsListenerError) as exc:
        print(f"dynanoise: cannot start: {exc}", file=sys.stderr)
        return 2


def serve(settings: Settings) -> int:
    from ..runtime import ModelRegistry

    ModelRegistry.load(settings.models_dir)  # fail fast, before any worker starts
    store = TenantStore(settings.database_url)
    store.migrate()
    if settings.create_demo_tenant:
        ensure_demo_tenant(store)
    store.close()
    _prepare_multiprocess_metrics(settings.workers)
    app: Any
    metrics: ServiceMetrics | None
    if settings.workers > 1:
        # Worker processes build their own apps; the listener (here, in the
        # supervisor: once, not per worker) aggregates their multiprocess files.
        app, factory, metrics = "service.app:app_from_env", True, None
    else:
        from ..app import create_app

        app, factory = create_app(settings), False
        metrics = app.state.services.metrics
    listener = metrics_listener(settings, metrics)  # binds: a port in use fails here
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with listener:
        _run_uvicorn(settings, app, factory)
    return 0


def metrics_listener(
    settings: Settings, metrics: ServiceMetrics | None
) -> AbstractContextManager[object]:
    """The metrics listener, bound now (a port in use fails here, before uvicorn),
    started on entering the context and stopped on leaving it: after uvicorn's drain
    on SIGTERM, so scrapes keep answering while requests finish. Nothing when
    DYNANOISE_METRICS_PORT is 0."""
    from ..api.metrics_listener import MetricsServer, metrics_app

    if settings.metrics_port == 0:
        return nullcontext()
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    return MetricsServer(
        metrics_app(metrics, token),
        settings.metrics_bind_host,
        settings.metrics_port,
        log_level=settings.log_level,
    )


def _run_uvicorn(settings: Settings, app: Any, factory: bool) -> None:
    uvicorn.run(
        app,
        factory=factory,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,  # request lines carry no bodies, but keep logs free of traffic detail
        server_header=False,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
    )


def _exit_cleanly(signum: int, frame: object) -> None:
    """SIGTERM handler outside uvicorn's drain. uvicorn finishes in-flight requests on
    SIGTERM and then re-raises the signal with the handler it found: this one, so a
    drained server exits with status 0 instead of being killed by the default action."""
    raise SystemExit(0)


def ensure_demo_tenant(store: TenantStore, key_file: Path = DEMO_KEY_FILE) -> str | None:
    """On a database with no tenants, create `demo` and print its key once.

    The key is also written to ``key_file`` (mode 0600) so that the README's curl
    example works right after `make serve`; delete the demo tenant in production.
    """
    if not store.is_empty():
        return None
    try:
        _, key = store.create(DEMO_TENANT)
    except TenantExists:  # another replica won the race
        return None
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    print(
        f"Created tenant '{DEMO_TENANT}'. Its API key (shown once, also in {key_file}):\n  {key}",
        flush=True,
    )
    return key


def _prepare_multiprocess_metrics(workers: int) -> None:
    """Each worker writes metric samples to PROMETHEUS_MULTIPROC_DIR; start it empty.

    Used whenever the variable is set (a container sets it, whatever the worker
    count) and created for several workers. The directory itself may be a mount
    point, so only its contents are removed.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        if workers <= 1:
            return
        directory = tempfile.mkdtemp(prefix="dynanoise-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
