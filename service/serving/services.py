"""The service container: everything a request needs, built once per process."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field

from ..inference import Predictor
from ..metrics import ServiceMetrics
from ..ratelimit import RateLimiter
from ..runtime import ModelRegistry
from ..settings import Settings
from ..tenants import TenantStore
from ..tenants.engine import StoreLimits
from .repeats import RepeatedQueryMonitor


@dataclass
class Services:
    """Settings, models, tenants, metrics and the predictor of one process.

    The rate limiter shares the tenant store's database unless one is passed in;
    ``repeats`` counts repeated queries per tenant (None: the monitor is off).
    """

    settings: Settings
    registry: ModelRegistry
    store: TenantStore
    metrics: ServiceMetrics
    predictor: Predictor
    rate_limiter: RateLimiter = field(init=False)
    limiter: InitVar[RateLimiter | None] = None
    repeats: RepeatedQueryMonitor | None = None

    def __post_init__(self, limiter: RateLimiter | None) -> None:
        self.rate_limiter = (
            limiter
            if limiter is not None
            else RateLimiter(
                self.store.engine, burst_seconds=self.settings.rate_limit_burst_seconds
            )
        )


def build_services(settings: Settings) -> Services:
    """Load every model and open (and migrate) the tenant store. Raises on a broken model."""
    registry = ModelRegistry.load(settings.models_dir, intra_op_threads=settings.onnx_threads)
    store = TenantStore(
        settings.database_url,
        cache_ttl_seconds=settings.tenant_cache_seconds,
        stale_grace_seconds=settings.stale_tenant_grace_seconds,
        limits=store_limits(settings),
    )
    store.migrate()
    metrics = ServiceMetrics()
    predictor = Predictor(
        metrics,
        batching_max_delay_ms=settings.batching_max_delay_ms,
        batching_max_batch=settings.batching_max_batch,
    )
    repeats = (
        RepeatedQueryMonitor(
            window_seconds=settings.repeat_window_seconds,
            sketch_bits=settings.repeat_sketch_bits,
            max_tenants=settings.repeat_max_tenants,
        )
        if settings.repeat_monitor
        else None
    )
    return Services(settings, registry, store, metrics, predictor, repeats=repeats)


def store_limits(settings: Settings) -> StoreLimits:
    """The tenant store's timeouts and call bounds, from the settings."""
    return StoreLimits(
        call_timeout_seconds=settings.store_timeout_seconds,
        connect_timeout_seconds=settings.store_connect_timeout_seconds,
        max_concurrent_calls=settings.store_max_concurrent_calls,
        queue_timeout_seconds=settings.store_queue_timeout_seconds,
    )
