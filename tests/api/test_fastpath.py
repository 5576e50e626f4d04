"""The lean inference route answers exactly as FastAPI's routes do, errors included."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.api import fastpath, inference
from service.app import create_app
from service.defense import DefenseParams
from service.inference import Predictor
from service.protocol import encode_v2_request
from service.runtime.batching import LoopGatherer
from service.settings import Settings
from service.tenants import TenantStore

from ..conftest import ADMIN_TOKEN, ROW_TOY

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _client(settings: Settings, fast: bool) -> TestClient:
    app = create_app(settings)
    app.fast_inference_routes = fast  # type: ignore[attr-defined]
    return TestClient(app)


@pytest.fixture(params=[0.0, 60.0], ids=["thread-pool", "inline"])
def clients(
    settings: Settings, request: pytest.FixtureRequest
) -> Iterator[tuple[TestClient, TestClient, dict[str, str]]]:
    """The app with and without the fast route, on one database, and tenant keys; with
    no tenant cache (every request in the thread pool) and with one (small requests
    inline on the event loop once their tenant is cached)."""
    settings = settings.model_copy(update={"tenant_cache_seconds": request.param})
    with _client(settings, fast=True) as fast, _client(settings, fast=False) as plain:
        keys = {}
        for name, params in (
            ("keyed", {"noise_mode": "keyed"}),
            ("limited", {"noise_mode": "keyed", "rate_limit_per_second": 0.001}),
            ("toy-only", {"noise_mode": "keyed", "allowed_models": ["toy"]}),
            ("one-row", {"noise_mode": "keyed", "rows_per_second": 0.001}),  # a bucket of 1 row
        ):
            created = fast.post("/admin/tenants", json={"name": name, **params}, headers=ADMIN)
            assert created.status_code == 201, created.text
            keys[name] = created.json()["api_key"]
        with TenantStore(settings.database_url) as store:  # as if created with clean outputs on
            keys["clean"] = store.create("clean", DefenseParams(base_variance=0.0))[1]
        yield fast, plain, keys


def _binary_body() -> tuple[bytes, dict[str, str]]:
    return encode_v2_request(np.array([ROW_TOY], dtype=np.float32), "input")


def _cases(keys: dict[str, str]) -> list[tuple[str, dict[str, object]]]:
    key = {"Authorization": f"Bearer {keys['keyed']}"}
    v1 = orjson.dumps({"instances": [ROW_TOY]})
    v2 = orjson.dumps(
        {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW_TOY}],
            "id": "r1",
        }
    )
    binary, binary_headers = _binary_body()
    return [
        ("/v1/models/toy/predict", {"content": v1, "headers": key}),
        (
            "/v1/models/toy/predict",
            {"content": gzip.compress(v1), "headers": {**key, "Content-Encoding": "gzip"}},
        ),
        ("/v2/models/toy/infer", {"content": v2, "headers": key}),
        ("/v2/models/toy/versions/1/infer", {"content": v2, "headers": key}),
        ("/v2/models/toy/versions/9/infer", {"content": v2, "headers": key}),
        ("/v2/models/toy/infer", {"content": binary, "headers": {**key, **binary_headers}}),
        ("/v1/models/toy/predict", {"content": v1}),  # no key
        ("/v1/models/toy/predict", {"content": v1, "headers": {"Authorization": "Basic abc"}}),
        ("/v1/models/toy/predict", {"content": v1, "headers": {"Authorization": "Bearer dn_x"}}),
        ("/v1/models/nope/predict", {"content": v1, "headers": key}),
        (
            "/v1/models/wide/predict",
            {"content": v1, "headers": {"Authorization": f"Bearer {keys['toy-only']}"}},
        ),
        ("/v1/models/toy/predict", {"content": b"{not json", "headers": key}),
        ("/v1/models/toy/predict", {"content": b'{"instances": [[1, 2]]}', "headers": key}),
        ("/v1/models/toy/predict", {"content": b"x" * 70_000, "headers": key}),  # over the limit
        ("/v2/models/toy/infer", {"content": b'{"inputs": []}', "headers": key}),
        (
            "/v1/models/toy/predict",
            {"content": v1, "headers": {"Authorization": f"Bearer {keys['clean']}"}},
        ),
        (  # two rows where the bucket holds one: refused whatever the bucket's state
            "/v1/models/toy/predict",
            {
                "content": orjson.dumps({"instances": [ROW_TOY, ROW_TOY]}),
                "headers": {"Authorization": f"Bearer {keys['one-row']}"},
            },
        ),
    ]


def test_fast_route_answers_like_the_fastapi_route(
    clients: tuple[TestClient, TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, plain, keys = clients
    served: list[str] = []
    route = fastpath.match
    monkeypatch.setattr(fastpath, "match", lambda path: served.append(path) or route(path))
    cases = _cases(keys)
    for path, kwargs in cases:
        a = fast.post(path, **kwargs)  # type: ignore[arg-type]
        b = plain.post(path, **kwargs)  # type: ignore[arg-type]
        assert (a.status_code, a.content) == (b.status_code, b.content), path
        for header in (
            "content-type",
            "x-content-type-options",
            "cache-control",
            "inference-header-content-length",
        ):
            assert a.headers.get(header) == b.headers.get(header), (path, header)
    # The fast client took the fast route (all but the body GuardMiddleware refuses by its
    # Content-Length before any route); the plain client never did.
    assert len(served) == len(cases) - 1


def test_fast_route_keeps_rate_limits_and_their_retry_after(
    clients: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    fast, _, keys = clients
    key = {"Authorization": f"Bearer {keys['limited']}"}
    body = orjson.dumps({"instances": [ROW_TOY]})
    assert fast.post("/v1/models/toy/predict", content=body, headers=key).status_code == 200
    refused = fast.post("/v1/models/toy/predict", content=body, headers=key)
    assert refused.status_code == 429
    assert refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "rate_limited"


def test_fast_route_refuses_clean_outputs_and_more_rows_than_the_bucket_holds(
    clients: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    fast, _, keys = clients
    clean = fast.post(
        "/v1/models/toy/predict",
        content=orjson.dumps({"instances": [ROW_TOY]}),
        headers={"Authorization": f"Bearer {keys['clean']}"},
    )
    assert clean.status_code == 403 and clean.json()["error"]["code"] == "clean_outputs_refused"
    rows = fast.post(
        "/v1/models/toy/predict",
        content=orjson.dumps({"instances": [ROW_TOY, ROW_TOY]}),
        headers={"Authorization": f"Bearer {keys['one-row']}"},
    )
    assert rows.status_code == 429 and rows.headers["retry-after"]
    assert "at most 1 rows per request" in rows.json()["error"]["message"]


def test_other_methods_and_paths_go_to_fastapi(
    clients: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    fast, _, _ = clients
    assert fast.get("/v1/models/toy/predict").status_code == 405
    assert fast.get("/v2/models/toy").status_code == 200
    assert fast.post("/v1/models/toy/predict/extra").status_code == 404


class _ThreadPoolCalls:
    """Counts the inference routes' hops to the thread pool (inline requests make none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        hop = inference.run_in_threadpool

        async def counted(*args: object, **kwargs: object) -> object:
            self.count += 1
            return await hop(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(inference, "run_in_threadpool", counted)


def _hops(settings: Settings, monkeypatch: pytest.MonkeyPatch, tenant: dict[str, object],
          body: bytes, requests: int = 3) -> int:  # fmt: skip
    """Thread-pool hops of ``requests`` identical predictions, all answered 200."""
    calls = _ThreadPoolCalls(monkeypatch)
    with TestClient(create_app(settings)) as client:
        created = client.post("/admin/tenants", json={"name": "t", **tenant}, headers=ADMIN)
        key = {"Authorization": f"Bearer {created.json()['api_key']}"}
        for _ in range(requests):
            response = client.post("/v1/models/toy/predict", content=body, headers=key)
            assert response.status_code == 200, response.text
    return calls.count


SMALL = orjson.dumps({"instances": [ROW_TOY]})


def test_small_requests_of_a_cached_tenant_run_inline(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = settings.model_copy(update={"tenant_cache_seconds": 60.0})
    # The first request loads the tenant in the thread pool; the next ones find it cached.
    assert _hops(cached, monkeypatch, {}, SMALL) == 1


def test_batching_keeps_a_model_measured_cheap_inline(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    batching = settings.model_copy(
        update={"tenant_cache_seconds": 60.0, "batching_max_delay_ms": 1.0}
    )
    # The toy model costs microseconds a call: its batcher never gathers, so its
    # requests stay on the event loop (the first loads the tenant in the pool).
    assert _hops(batching, monkeypatch, {}, SMALL) == 1


def test_a_gathering_model_is_awaited_on_the_event_loop_not_in_the_thread_pool(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model whose batcher gathers: its requests await a merged call on the model's
    # own threads (LoopGatherer) instead of each taking a pool thread to wait in.
    batching = settings.model_copy(
        update={"tenant_cache_seconds": 60.0, "batching_max_delay_ms": 1.0}
    )
    monkeypatch.setattr(Predictor, "gathers", lambda self, model: True)
    gathered: list[int] = []
    run = LoopGatherer.run

    async def counted(self: LoopGatherer, batch: np.ndarray) -> np.ndarray:
        gathered.append(batch.shape[0])
        return await run(self, batch)

    monkeypatch.setattr(LoopGatherer, "run", counted)
    # The first request loads the tenant in the pool (and runs there, blocking on the
    # model); the next two find it cached and are gathered.
    assert _hops(batching, monkeypatch, {}, SMALL) == 1
    assert gathered == [1, 1]


@pytest.mark.parametrize(
    ("changes", "tenant", "body"),
    [
        ({"tenant_cache_seconds": 0.0}, {}, SMALL),  # every request may query the database
        ({}, {"rate_limit_per_second": 1000.0}, SMALL),  # the limiter may write to it
        ({}, {"rows_per_second": 1000.0}, SMALL),  # so may the rows limiter
        ({"inline_max_body_bytes": 0}, {}, SMALL),  # inline switched off
        ({"inline_max_body_bytes": 100}, {}, orjson.dumps({"instances": [ROW_TOY] * 8})),
    ],
    ids=["no-cache", "rate-limited", "rows-limited", "inline-off", "large-body"],
)
def test_requests_that_could_block_the_event_loop_use_the_thread_pool(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, object],
    tenant: dict[str, object],
    body: bytes,
) -> None:
    configured = settings.model_copy(update={"tenant_cache_seconds": 60.0, **changes})
    assert _hops(configured, monkeypatch, tenant, body) == 3


def test_the_lean_path_serves_an_app_mounted_under_a_root_path(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []
    route = fastpath.match
    monkeypatch.setattr(fastpath, "match", lambda path: served.append(path) or route(path))
    with TestClient(create_app(settings), root_path="/api") as client:
        created = client.post("/admin/tenants", json={"name": "t"}, headers=ADMIN)
        key = {"Authorization": f"Bearer {created.json()['api_key']}"}
        response = client.post("/v1/models/toy/predict", content=SMALL, headers=key)
    assert response.status_code == 200, response.text
    assert "/v1/models/toy/predict" in served  # matched below the root path
