"""One inference pipeline for every protocol (MLServer's ``DataPlane.infer``).

screen the head (key present and well-formed, Content-Type) -> read the body ->
observe -> authenticate -> decompress -> refuse clean outputs -> rate-limit ->
authorize -> decode -> rate-limit rows -> validate -> count (and cap) repeated rows ->
predict -> encode. Routes and
the lean ASGI path only turn a request into an `InferenceCall` and the `Encoded`
answer into a response; the status a failure is counted under comes from the API's
one error table (``status_of``), so this module never speaks HTTP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from ..errors import CleanOutputsRefused, Forbidden, RateLimited, Unauthorized
from ..inference import DefenseContext, Steps, run_steps, run_steps_async
from ..metrics import UNKNOWN, ServiceMetrics
from ..protocol import decompress
from ..runtime import OnnxClassifier
from ..runtime.manifest import ModelManifest
from ..tenants import PresentedKey, Tenant
from ..tenants.domain import ALLOW_CLEAN_OUTPUTS_VARIABLE
from .codecs import Codec, Encoded
from .services import Services

StatusOf = Callable[[BaseException | None], int]
"""The status code a request is answered with, given its exception or None (the API's
error table)."""


@dataclass(frozen=True, slots=True)
class InferenceCall:
    """One inference request, protocol-neutral.

    ``api_key`` is the bearer token as sent (None: no Authorization header), parsed
    and hashed once into ``key`` (unless given); ``headers`` are the request's
    (case-insensitive names); ``body`` is the raw body, its size already capped.
    """

    codec: Codec
    model: str
    version: str | None
    api_key: str | None
    body: bytes
    headers: Mapping[str, str]
    key: PresentedKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.key is None and self.api_key:
            object.__setattr__(self, "key", PresentedKey.parse(self.api_key))

    def with_body(self, body: bytes) -> InferenceCall:
        """This call with its body read; the key stays parsed (hashed once)."""
        return InferenceCall(
            self.codec, self.model, self.version, self.api_key, body, self.headers, self.key
        )


class RequestObservation:
    """Times a request and counts it by status code, labelled by the tenant and model
    once they are known (UNKNOWN before that)."""

    def __init__(self, metrics: ServiceMetrics, endpoint: str, status_of: StatusOf) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self._status_of = status_of
        self.tenant = UNKNOWN
        self.model = UNKNOWN
        self._started = time.perf_counter()

    def __enter__(self) -> RequestObservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        code = self._status_of(exc)
        self._metrics.observe_request(
            self.model, self.tenant, self._endpoint, code, time.perf_counter() - self._started
        )


class DataPlane:
    """The inference pipeline of one process."""

    def __init__(self, services: Services, status_of: StatusOf) -> None:
        self.services = services
        self.status_of = status_of

    def infer(self, call: InferenceCall, tenant: Tenant | None = None) -> Encoded:
        """Defended answer to ``call``; ``tenant`` when the caller already resolved it
        from the auth cache (the lean path), else it is authenticated here."""
        predictor = self.services.predictor
        return run_steps(self._pipeline(call, tenant), predictor.logits)

    async def infer_gathered(self, call: InferenceCall, tenant: Tenant) -> Encoded:
        """`infer` on the event loop for a call whose model gathers (`gathers`): every
        step runs here but the model, which runs in a call merged with other requests'
        on the model's own threads while the loop serves others."""
        predictor = self.services.predictor
        return await run_steps_async(self._pipeline(call, tenant), predictor.logits_gathered)

    async def infer_coalescing(self, call: InferenceCall, tenant: Tenant) -> Encoded:
        """`infer` on the event loop while other requests are held for this turn of the
        loop (`coalescing`): the model's call is shared with theirs when it is cheap
        enough to run on the loop (`Predictor.coalesces`), else made at once."""
        predictor = self.services.predictor
        return await run_steps_async(self._pipeline(call, tenant), predictor.logits_maybe_coalesced)

    def coalescing(self) -> bool:
        """Whether requests answered inline should take `infer_coalescing` now."""
        return self.services.predictor.may_coalesce()

    def gathers(self, call: InferenceCall) -> bool:
        """Whether ``call``'s model gathers concurrent requests into merged calls now."""
        registry = self.services.registry
        return call.model in registry and self.services.predictor.gathers(registry.get(call.model))

    def _pipeline(self, call: InferenceCall, tenant: Tenant | None) -> Steps[Encoded]:
        """The pipeline of the module docstring, as steps (`service.inference.Steps`)."""
        services = self.services
        settings = services.settings
        with RequestObservation(services.metrics, call.codec.name, self.status_of) as seen:
            tenant = tenant if tenant is not None else self.authenticate(call)
            seen.tenant = tenant.name
            body = decompress(  # only once the key is known: nobody else's body is inflated
                call.body, call.headers.get("content-encoding"), settings.max_body_bytes
            )
            if tenant.params.releases_clean_outputs and not settings.allow_clean_outputs:
                raise CleanOutputsRefused(_CLEAN_OUTPUTS_MESSAGE)
            limiter = services.rate_limiter
            limiter.enforce(tenant)
            classifier = self.authorize(tenant, call.model)
            seen.model = classifier.name
            manifest = classifier.manifest
            decoded = call.codec.decode(
                body, call.headers, manifest, call.version, settings.max_batch
            )
            if tenant.rows_per_second is not None:  # the batch's rows, before any work
                limiter.enforce_rows(tenant, _rows(decoded.batch))
            batch = classifier.validate(decoded.batch)
            self.watch_repeats(tenant, classifier.name, batch)
            context = DefenseContext(tenant.name, tenant.params, tenant.noise_secret)
            probabilities = yield from services.predictor.prediction(classifier, context, batch)
            return call.codec.encode(manifest, decoded, probabilities)

    def watch_repeats(self, tenant: Tenant, model: str, batch: NDArray[np.generic]) -> None:
        """Count the rows of ``batch`` that repeat a recent row of ``tenant``'s; raise
        RateLimited when that makes its repeats per minute exceed its cap. The refused
        batch is counted too: a client that keeps sending stays refused."""
        monitor = self.services.repeats
        if monitor is None:
            return
        repeated = monitor.observe(tenant.name, batch)
        self.services.metrics.observe_repeats(model, tenant.name, repeated)
        cap = tenant.repeated_queries_per_minute
        if cap is None or not repeated:
            return
        wait = monitor.seconds_until_under(tenant.name, cap)
        if wait > 0:
            raise RateLimited(
                f"limit of {cap:g} repeated queries per minute exceeded: this tenant sent "
                "rows that (nearly) repeat rows it sent in the last minutes",
                wait,
            )

    def authenticate(self, call: InferenceCall) -> Tenant:
        if not call.api_key:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        tenant = self.services.store.authenticate(call.key)
        if tenant is None:
            raise Unauthorized("invalid API key")
        return tenant

    def authorize(self, tenant: Tenant, model_name: str) -> OnnxClassifier:
        model = self.services.registry.get(model_name)
        if not tenant.allows(model.name):
            raise Forbidden(f"this API key may not use model {model_name!r}")
        return model

    def screen(self, call: InferenceCall) -> None:
        """Refuse ``call`` on its head alone, before its body is read: a missing or
        malformed API key (401), then a Content-Type its protocol is not sent as (415).
        Neither needs the database, so this runs on the event loop; a well-formed key is
        looked up in `infer`. A refusal is counted as `infer` counts one."""
        started = time.perf_counter()
        try:
            if call.key is None:
                self.authenticate(call)  # raises: no key, or one no tenant can own
            call.codec.check_media_type(call.headers)
        except Exception as exc:
            self.services.metrics.observe_request(
                UNKNOWN,
                UNKNOWN,
                call.codec.name,
                self.status_of(exc),
                time.perf_counter() - started,
            )
            raise

    @property
    def lookup_wait_seconds(self) -> float:
        """How long a request waits on the event loop for its key's lookup
        (`tenant_lookup`) before it goes to the thread pool like any other."""
        return self.services.settings.store_timeout_seconds

    def tenant_lookup(self, call: InferenceCall) -> Future[Tenant | None] | None:
        """The lookup under way of ``call``'s key when the key was answered before
        (`TenantStore.lookup_under_way`) and the call is small enough to run inline
        once its tenant is known; None otherwise."""
        if call.key is None or len(call.body) > self.services.settings.inline_max_body_bytes:
            return None
        return self.services.store.lookup_under_way(call.key)

    def cached_tenant(self, call: InferenceCall, margin_seconds: float = 0.0) -> Tenant | None:
        """The caller's tenant when ``call`` may run on the event loop, else None.

        Only when nothing in it can block: its tenant is in this process's auth cache
        (fresh for ``margin_seconds`` more: none is needed when the tenant returned is
        the one `infer` is given, as the routes do), it has no limit of any kind (requests,
        rows or repeated queries: the limiter may write to the database, and a capped
        tenant's refusals are kept off the event loop like the others), the body is small
        (``inline_max_body_bytes``) and so is the work it can ask for: at most
        ``inline_max_noise_draws`` (rows x ensemble x classes, `noise_draws_bound`). A
        model that gathers (`gathers`) is not run here but awaited (`infer_gathered`).
        """
        services = self.services
        settings = services.settings
        if call.key is None or len(call.body) > settings.inline_max_body_bytes:
            return None
        if call.model not in services.registry:
            return None
        tenant = services.store.cached(call.key, min_remaining_seconds=margin_seconds)
        if (
            tenant is None
            or tenant.rate_limit_per_second is not None
            or tenant.rows_per_second is not None
            or tenant.repeated_queries_per_minute is not None
        ):
            return None
        manifest = services.registry.get(call.model).manifest
        draws = noise_draws_bound(call, manifest, tenant.params.ensemble_size, settings.max_batch)
        return tenant if draws <= settings.inline_max_noise_draws else None


_CLEAN_OUTPUTS_MESSAGE = (
    "this tenant's base_variance is 0, so its answers would be the model's clean "
    "probabilities (a bijection of them at any temperature); this server refuses them "
    f"unless {ALLOW_CLEAN_OUTPUTS_VARIABLE} is set: ask the operator to raise base_variance"
)


def noise_draws_bound(
    call: InferenceCall, manifest: ModelManifest, ensemble_size: int, max_batch: int
) -> int:
    """An upper bound on the noise draws ``call`` can ask for, rows x ensemble_size x
    classes, known before its body is decoded: each value of a row takes a byte or
    more (raw or as JSON), so a plain body holds at most len(body) / values-per-row
    rows; a compressed one is bounded by the batch limit only."""
    rows = max_batch
    encoding = call.headers.get("content-encoding")
    if not encoding or encoding == "identity":
        rows = min(rows, len(call.body) // math.prod(manifest.input.sample_shape))
    return rows * ensemble_size * len(manifest.labels)


def _rows(batch: object) -> int:
    """The rows a decoded batch holds (its first axis); 1 for a scalar."""
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 1
