"""Service settings: one pydantic-settings object read from DYNANOISE_* variables,
built once and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
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
    # Connections and clients (issue 14): limits of one process's HTTP server, weak
    # secrets, and the throttle on failed authentication.
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request head (request line and headers): a larger one is "
        "answered 431 (414 for the request line alone) and its connection closed.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A request's line and headers must all arrive within this time of its "
        "first byte; otherwise 408 and the connection is closed (slowloris).",
    )
    body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A request's body must all arrive within this time once the server "
        "reads it (time the server itself holds the body back is not counted); "
        "otherwise 408 and the connection is closed.",
    )
    keep_alive_seconds: int = Field(
        default=5,
        ge=1,
        description="A connection with no request in progress (just opened, or between "
        "requests) is closed after this long idle.",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Most connections one process holds; a connection beyond it is "
        "answered 503 and closed at once. Per worker process.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or networks (or `*`) of reverse proxies "
        "whose X-Forwarded-For/-Proto are believed: the client address (for the "
        "failed-authentication throttle) is then the one they forward. Empty: none, "
        "the client address is the connection's peer.",
    )
    auth_failure_burst: int = Field(
        default=20,
        ge=0,
        description="Failed authentications (401, inference or admin API) one client "
        "address may make at once before its requests are answered 429 with "
        "Retry-After; 0 = no throttle. Per process.",
    )
    auth_failures_per_minute: float = Field(
        default=10.0,
        gt=0,
        description="Rate at which a throttled client address regains failed "
        "authentications (a token bucket of `auth_failure_burst` tokens).",
    )
    auth_throttle_max_clients: int = Field(
        default=10_000,
        ge=1,
        description="Most client addresses the failed-authentication throttle "
        "remembers per process (the longest idle forgotten first): bounded memory.",
    )
    metrics_port: int = Field(
        default=8002,
        ge=0,
        le=65535,
        description="Port of the Prometheus metrics listener, apart from the inference "
        "port (Triton's convention); 0 = no metrics listener.",
    )
    metrics_host: str | None = Field(
        default=None, description="Bind address of the metrics listener (unset: `host`)."
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, a scrape needs `Authorization: Bearer <token>` (refused otherwise).",
    )
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
    store_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest a request waits for one tenant-store call: past it the call "
        "answers 503 (a known tenant is served from cache). Also PostgreSQL's "
        "statement_timeout and lock_timeout and SQLite's busy timeout.",
    )
    store_connect_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest a new PostgreSQL connection may take (libpq connect_timeout, "
        "whole seconds, at least 2).",
    )
    store_max_concurrent_calls: int = Field(
        default=8,
        ge=1,
        description="Most tenant-store calls in flight per process: a hung database holds "
        "at most this many threads. The connection pool holds twice as many (the rest "
        "for the rate limiter).",
    )
    store_queue_timeout_seconds: float = Field(
        default=0.5,
        ge=0,
        description="Longest a store call waits for a free slot, and a rate-limit check for "
        "a pooled connection, before answering 503 (or limiting per process).",
    )
    create_demo_tenant: bool = Field(
        default=True, description="Create a `demo` tenant and print its key on first start."
    )
    allow_clean_outputs: bool = Field(
        default=False,
        description="Allow tenants with base_variance 0, whose answers are a bijection of the "
        "model's clean probabilities (at any temperature). Off: the admin API and CLI refuse "
        "such a tenant and a stored one is refused at serve time. For benchmarks "
        "and tests only.",
    )
    onnx_threads: int = Field(
        default=1, ge=0, description="intra-op threads per ONNX session (0 = onnxruntime default)."
    )
    batching_max_delay_ms: float = Field(
        default=2.0,
        ge=0,
        description="Adaptive micro-batching: wait up to this long to gather concurrent "
        "requests into one ONNX call (0 = off). Only a model whose measured fixed cost "
        "per call pays for the hand-off is gathered; others (the shipped MLP) run on the "
        "inline path, each request at once, or with the requests of the same turn of the "
        "event loop as one call (no wait, no thread) when several arrive together.",
    )
    batching_max_batch: int = Field(default=256, ge=1)
    inline_max_body_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="Inference requests with bodies up to this size run on the event loop "
        "when nothing in them can block (tenant cached, no rate limits); larger ones, and "
        "every other request, run in the thread pool (0 = never inline). 256 KiB of JSON "
        "(47 digits-sized rows) hold the loop about 2 ms, less than a pool thread holds "
        "the GIL before Python makes it yield (5 ms).",
    )
    rate_limit_burst_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Bucket size of a rate-limited tenant, in seconds of its rate: it may "
        "send max(1, rate_limit_per_second * this) requests at once, then its rate.",
    )
    repeat_monitor: bool = Field(
        default=True,
        description="Count, per tenant, the input rows that repeat (exactly or as "
        "imperceptibly changed copies) a row it sent in the last window or two "
        "(dynanoise_repeated_queries_total; a tenant's repeated_queries_per_minute caps "
        "them). Off: neither counted nor capped.",
    )
    repeat_window_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Window of the repeated-query monitor: a row is remembered for one to "
        "two windows.",
    )
    repeat_sketch_bits: int = Field(
        default=2**20,
        ge=2**10,
        le=2**32,
        description="Bits of each of a tenant's two Bloom filters in the repeated-query "
        "monitor (a power of two; two filters per tenant per worker, 256 KiB at 2**20). "
        "They hold bits / 16 distinct rows per window at a false-positive rate under "
        "0.1 %; raise it for tenants that send more.",
    )
    repeat_max_tenants: int = Field(
        default=256,
        ge=1,
        description="Most tenants the repeated-query monitor tracks per worker (least "
        "recently seen forgotten first); memory is at most this times two filters.",
    )
    graceful_shutdown_seconds: int = Field(
        default=20,
        ge=1,
        description="On SIGTERM, stop accepting connections and let in-flight requests "
        "finish for at most this long before cancelling them (keep it below the "
        "orchestrator's kill timeout, 30 s in Kubernetes).",
    )
    # Admission control (issue 17): a bounded queue per worker in front of inference.
    admission_max_in_flight: int = Field(
        default=80,
        ge=0,
        description="Most inference requests one worker process admits at once (being "
        "processed, or waiting for a thread); the next ones wait in a FIFO queue (0 = "
        "admission control off: no limit, no queue). The default, twice the thread "
        "pool's 40 threads, is a safety net; 8 bounds the tail (docs/reliability.md).",
    )
    admission_max_queue: int = Field(
        default=256,
        ge=0,
        description="Most inference requests waiting for admission per worker; one more "
        "is answered 503 `overloaded` with Retry-After at once (0 = no bound on the "
        "queue's size, Triton's convention).",
    )
    admission_max_queue_delay_ms: float = Field(
        default=100.0,
        ge=0,
        description="Longest an inference request waits for admission, counted from when "
        "its head was parsed (the wait for a saturated event loop counts too); past it, "
        "503 `overloaded` with Retry-After (0 = no bound on the wait).",
    )
    log_level: str = "info"
    event_loop: Literal["asyncio", "uvloop"] = Field(
        default="asyncio",
        description="uvicorn's event loop. asyncio answers requests in the order they "
        "arrive; uvloop costs about 10 % less CPU a request but, once a worker is "
        "saturated, leaves some connections unread for hundreds of milliseconds (p99 "
        "20x p50 at 64 connections, bench/README.md).",
    )
    # Inline inference by cost (issue 14): what may run on the event loop.
    inline_max_noise_draws: int = Field(
        default=8192,
        ge=0,
        description="An inference request runs on the event loop (see "
        "inline_max_body_bytes) only if the noise draws it can ask for, rows x "
        "ensemble_size x classes with rows bounded by its body, are at most this many; "
        "costlier ones go to the thread pool.",
    )
    # Model repository (issue 15): every process follows the models directory.
    model_poll_seconds: float = Field(
        default=10.0,
        ge=0,
        description="Every worker re-reads the models directory this often and loads new "
        "or changed models, unloads removed ones and those marked `disabled` (by "
        "POST /v2/repository/models/{m}/unload); 0: off (then a repository load or "
        "unload changes only the worker that answered it).",
    )

    # Demo tenant's key file (issue 15): beside the store it belongs to.
    demo_key_file: Path | None = Field(
        default=None,
        description="Where `serve` writes the demo tenant's key on first start and "
        "`dynanoise tenants rotate-key demo` refreshes it. Unset: `demo_api_key` in the "
        "directory of a SQLite database file (data/demo_api_key by default); no file for "
        "other databases (the key is printed once).",
    )

    @field_validator("metrics_host", "metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `DYNANOISE_METRICS_TOKEN=` (e.g. compose's ${VAR:-}) means no token, not "".
        return None if value == "" else value

    @field_validator("repeat_sketch_bits")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("repeat_sketch_bits must be a power of two")
        return value

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> Settings:
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port (or be 0: no metrics listener)")
        return self

    @property
    def metrics_bind_host(self) -> str:
        """Where the metrics listener binds: `metrics_host`, else the inference `host`."""
        return self.metrics_host if self.metrics_host is not None else self.host
