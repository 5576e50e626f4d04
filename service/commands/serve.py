"""`dynanoise serve`: migrate the store, create the demo tenant on first start, run uvicorn,
and beside it the metrics listener on its own port."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import SecretStr, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..api.auth_throttle import with_auth_throttle
from ..api.http_limits import HttpLimits, protocol_factory
from ..runtime import ModelLoadError
from ..serving.services import store_limits
from ..settings import Settings
from ..tenants import TenantError, TenantExists, TenantStore

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from ..metrics import ServiceMetrics

DEMO_TENANT = "demo"
DEMO_KEY_NAME = "demo_api_key"
MIN_TOKEN_CHARS = 32
# Values of the shipped examples (.env.example, deploy/k8s/secret.example.yaml) and
# their kind: a token containing one of these is a placeholder, not a secret.
_PLACEHOLDER_MARKERS = (
    "replace",
    "change-me",
    "changeme",
    "change_me",
    "placeholder",
    "example",
    "your-",
    "your_",
    "<",
    ">",
)
_MIN_DISTINCT_CHARS = 8


class StartupError(Exception):
    """`dynanoise serve` cannot start; the message is its one line, free of secrets."""


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
    except (ModelLoadError, MetricsListenerError, StartupError) as exc:
        print(f"dynanoise: cannot start: {exc}", file=sys.stderr)
        return 2


def serve(settings: Settings) -> int:
    from ..runtime import ModelRegistry

    ModelRegistry.load(settings.models_dir)  # fail fast, before any worker starts
    check_secrets(settings)
    prepare_store(settings)
    _prepare_multiprocess_metrics(settings.workers)
    app: Any
    metrics: ServiceMetrics | None
    if settings.workers > 1:
        # Worker processes build their own apps; the listener (here, in the
        # supervisor: once, not per worker) aggregates their multiprocess files.
        app, factory, metrics = "service.commands.serve:worker_app", True, None
    else:
        from ..app import create_app

        inner = create_app(settings)
        app, factory = with_auth_throttle(inner, settings), False
        metrics = inner.state.services.metrics
    listener = metrics_listener(settings, metrics)  # binds: a port in use fails here
    signal.signal(signal.SIGTERM, _exit_cleanly)
    freeze_startup_objects()
    with listener:
        _run_uvicorn(settings, app, factory)
    return 0


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, the app, models, instruments: some
    130,000) out of the garbage collector's reach, so that a full collection walks only
    what serving created since instead of pausing every request in flight (90 ms for a
    full collection at startup, measured on the benchmark machine). Frozen objects are
    still freed by reference counting (an unloaded model is: it is in no cycle); only
    a cycle among them would never be collected.
    """
    gc.collect()
    gc.freeze()


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


def worker_app() -> ASGIApp:
    """uvicorn factory for worker processes: settings from DYNANOISE_* variables, the
    app behind the failed-authentication throttle (one per worker)."""
    from ..app import create_app

    settings = Settings()
    app = with_auth_throttle(create_app(settings), settings)
    freeze_startup_objects()
    return app


def _run_uvicorn(settings: Settings, app: Any, factory: bool) -> None:
    trusted_proxies = settings.trusted_proxies.strip()
    uvicorn.run(
        app,
        factory=factory,
        # asyncio's loop, not uvloop, by default: under saturation uvloop serves some
        # connections over and over while others wait unread (settings.event_loop).
        loop=settings.event_loop,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # httptools with the limits uvicorn lacks: head size, head/body deadlines,
        # idle connections, connections per process (service/api/http_limits.py).
        http=protocol_factory(http_limits(settings)),
        timeout_keep_alive=settings.keep_alive_seconds,
        # X-Forwarded-For is believed from the configured proxies only (never by
        # default): the client address keys the failed-authentication throttle.
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=trusted_proxies or None,
        log_level=settings.log_level,
        access_log=False,  # request lines carry no bodies, but keep logs free of traffic detail
        server_header=False,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
    )


def http_limits(settings: Settings) -> HttpLimits:
    return HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_seconds=settings.header_timeout_seconds,
        body_timeout_seconds=settings.body_timeout_seconds,
        keep_alive_seconds=settings.keep_alive_seconds,
        max_connections=settings.max_connections,
    )


def check_secrets(settings: Settings) -> None:
    """Refuse a placeholder or short admin or metrics token (StartupError): a token
    from an example file opens the admin API to anyone who has read the example."""
    for variable, token in (
        ("DYNANOISE_ADMIN_TOKEN", settings.admin_token),
        ("DYNANOISE_METRICS_TOKEN", settings.metrics_token),
    ):
        problem = weak_token_problem(token)
        if problem is not None:
            raise StartupError(
                f"{variable} {problem}; generate one with `openssl rand -hex 32` "
                "(or leave it unset)"
            )


def weak_token_problem(token: SecretStr | None) -> str | None:
    """Why ``token`` is not a secret (None when it is one, or is unset)."""
    if token is None or not token.get_secret_value():
        return None
    value = token.get_secret_value()
    lowered = value.lower()
    if any(marker in lowered for marker in _PLACEHOLDER_MARKERS):
        return "is a placeholder from an example"
    if len(value) < MIN_TOKEN_CHARS:
        return f"has {len(value)} characters, fewer than {MIN_TOKEN_CHARS}"
    if len(set(value)) < _MIN_DISTINCT_CHARS:
        return f"has fewer than {_MIN_DISTINCT_CHARS} distinct characters"
    return None


def prepare_store(settings: Settings) -> None:
    """Open the tenant store, migrate it and (when asked) create the demo tenant, then
    close it. A store that cannot be opened raises StartupError with one line: the
    URL with its password masked and the database's own reason."""
    try:
        store = TenantStore(settings.database_url, limits=store_limits(settings))
        try:
            store.migrate()
            if settings.create_demo_tenant:
                ensure_demo_tenant(store, demo_key_path(settings))
        finally:
            store.close()
    except (SQLAlchemyError, TenantError, OSError) as exc:
        raise StartupError(
            f"tenant store {_masked_url(settings.database_url)}: "
            f"{_store_reason(exc, _password(settings.database_url))}"
        ) from None


def _masked_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:  # unparsable: show none of it
        return "(DYNANOISE_DATABASE_URL)"


def _password(url: str) -> str | None:
    try:
        password = make_url(url).password
    except SQLAlchemyError:
        return None
    return str(password) if password else None


def _store_reason(exc: BaseException, password: str | None) -> str:
    """The innermost useful message of ``exc`` on one line, passwords masked: the
    driver's own error (e.g. psycopg's) when SQLAlchemy or the store wrapped one."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    original = getattr(cause, "orig", None)
    reason = str(original if original is not None else cause) or type(cause).__name__
    reason = " ".join(line.strip() for line in reason.splitlines() if line.strip())
    reason = reason.split(" (Background on this error", 1)[0]
    reason = _USERINFO.sub(r"\1***@", reason)
    return reason.replace(password, "***") if password else reason


_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def _exit_cleanly(signum: int, frame: object) -> None:
    """SIGTERM handler outside uvicorn's drain. uvicorn finishes in-flight requests on
    SIGTERM and then re-raises the signal with the handler it found: this one, so a
    drained server exits with status 0 instead of being killed by the default action."""
    raise SystemExit(0)


def demo_key_path(settings: Settings, database_url: str | None = None) -> Path | None:
    """Where the demo tenant's key of the store at ``database_url`` (default: the
    settings') is kept: DYNANOISE_DEMO_KEY_FILE, else `demo_api_key` beside a SQLite
    database file, so servers of different stores never share one; None (no file) for
    other databases and in-memory SQLite."""
    if settings.demo_key_file is not None:
        return settings.demo_key_file
    try:
        url = make_url(database_url or settings.database_url)
    except SQLAlchemyError:
        return None
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database).parent / DEMO_KEY_NAME


def write_demo_key(key_file: Path, key: str) -> None:
    """Write ``key`` to ``key_file``, readable by its owner only (mode 0600)."""
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.chmod(0o600)
    key_file.write_text(key + "\n")


def ensure_demo_tenant(store: TenantStore, key_file: Path | None) -> str | None:
    """On a database with no tenants, create `demo` and print its key once.

    The key is also written to ``key_file`` (`demo_key_path`; mode 0600) so that the
    README's curl example works right after `make serve`; delete the demo tenant in
    production. `dynanoise tenants rotate-key demo` refreshes the file.
    """
    if not store.is_empty():
        return None
    try:
        _, key = store.create(DEMO_TENANT)
    except TenantExists:  # another replica won the race
        return None
    where = ""
    if key_file is not None:
        write_demo_key(key_file, key)
        where = f", also in {key_file}"
    print(f"Created tenant '{DEMO_TENANT}'. Its API key (shown once{where}):\n  {key}", flush=True)
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
