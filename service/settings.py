"""Service settings: one pydantic-settings object read from DYNANOISE_* variables,
built once and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="DYNANOISE_", env_file=None, extra="ignore")

    database_url: str = Field(
        default="sqlite:///./data/dynanoise.db",
        description="SQLAlchemy URL of the tenant store (SQLite file or PostgreSQL).",
    )
    models_dir: Path = Field(default=Path("./models"), description="Directory of ONNX models.")
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for /admin; admin API is off when unset."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    max_batch: int = Field(default=1024, ge=1, description="Most rows in one request.")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    tenant_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How long a worker reuses a tenant read from the database; "
        "parameter changes reach every worker within this time.",
    )
    stale_tenant_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        description="While the database is unreachable, keep serving known tenants this long.",
    )
    create_demo_tenant: bool = Field(
        default=True, description="Create a `demo` tenant and print its key on first start."
    )
    onnx_threads: int = Field(
        default=1, ge=0, description="intra-op threads per ONNX session (0 = onnxruntime default)."
    )
    batching_max_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="Adaptive micro-batching: wait up to this long to gather concurrent "
        "requests into one ONNX call (0 = off).",
    )
    batching_max_batch: int = Field(default=256, ge=1)
    inline_max_body_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        description="Inference requests with bodies up to this size run on the event loop "
        "when nothing in them can block (tenant cached, no rate limit, batching off); "
        "larger ones, and every other request, run in the thread pool (0 = never inline).",
    )
    rate_limit_burst_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Bucket size of a rate-limited tenant, in seconds of its rate: it may "
        "send max(1, rate_limit_per_second * this) requests at once, then its rate.",
    )
    graceful_shutdown_seconds: int = Field(
        default=20,
        ge=1,
        description="On SIGTERM, stop accepting connections and let in-flight requests "
        "finish for at most this long before cancelling them (keep it below the "
        "orchestrator's kill timeout, 30 s in Kubernetes).",
    )
    log_level: str = "info"
