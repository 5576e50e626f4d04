"""The lean route speaks raw ASGI: its headers, body reading and answers are Starlette's
to the byte, and a request's key is hashed once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message

from service.api import fastpath, inference
from service.api.fastpath import RequestHeaders, raw_headers, read_body
from service.app import create_app
from service.protocol import encode_v2_request
from service.serving import CODECS, Encoded, InferenceCall
from service.settings import Settings
from service.tenants import PresentedKey
from service.tenants.keys import generate_api_key

from ..conftest import ADMIN_TOKEN, ROW_TOY

ENCODED = [
    Encoded(b'{"model":"toy"}', "application/json"),
    Encoded(b"{}\x00\x01", "application/octet-stream", {"Inference-Header-Content-Length": "2"}),
    Encoded(b"plain", "text/plain"),
    Encoded(b"x", "application/json", {"Content-Type": "application/custom"}),
]


@pytest.mark.parametrize("encoded", ENCODED, ids=["json", "binary", "text", "own-type"])
def test_raw_headers_are_what_a_starlette_response_writes(encoded: Encoded) -> None:
    starlette = Response(
        encoded.content,
        media_type=encoded.media_type,
        headers=dict(encoded.headers) if encoded.headers else None,
    )
    assert raw_headers(encoded) == starlette.raw_headers


RAW = [
    (b"host", b"127.0.0.1"),
    (b"authorization", b"Bearer dn_a"),
    (b"x-repeated", b"first"),
    (b"x-repeated", b"second"),
    (b"content-type", b"application/json; charset=\xe9"),  # latin-1, as Starlette reads it
]


def test_request_headers_answer_as_starlettes_headers() -> None:
    ours, theirs = RequestHeaders.from_raw(RAW), Headers(raw=RAW)
    for name in ("host", "Authorization", "X-REPEATED", "content-type", "missing"):
        assert ours.get(name) == theirs.get(name), name
        assert (name in ours) == (name in theirs), name
    assert ours["X-Repeated"] == "first"
    with pytest.raises(KeyError):
        ours["missing"]


def _receiver(messages: list[Message]) -> Iterator[Message]:
    yield from messages


@pytest.mark.parametrize(
    "messages",
    [
        [{"type": "http.request", "body": b"whole", "more_body": False}],
        [{"type": "http.request"}],  # no body key: empty
        [
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"", "more_body": True},
            {"type": "http.request", "body": b"cd", "more_body": False},
        ],
        [
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.disconnect"},
        ],
    ],
    ids=["one-message", "no-body", "chunked", "disconnect"],
)
def test_read_body_reads_as_starlettes_request_body(messages: list[Message]) -> None:
    async def outcome(read: object) -> bytes | type[Exception]:
        try:
            return await read()  # type: ignore[operator]
        except ClientDisconnect:
            return ClientDisconnect

    def receive_from(stream: Iterator[Message]) -> object:
        async def receive() -> Message:
            return next(stream)

        return receive

    ours = asyncio.run(outcome(lambda: read_body(receive_from(iter(messages)))))  # type: ignore[arg-type]
    scope = {"type": "http", "method": "POST", "headers": []}
    request = Request(scope, receive_from(iter(messages)))  # type: ignore[arg-type]
    theirs = asyncio.run(outcome(request.body))
    assert ours == theirs


def test_a_calls_key_is_parsed_once_with_its_body(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    parse = PresentedKey.parse
    monkeypatch.setattr(PresentedKey, "parse", lambda key: parsed.append(key) or parse(key))
    api_key, _ = generate_api_key()
    head = InferenceCall(CODECS["v1"], "toy", None, api_key, b"", {})
    call = head.with_body(b"{}")
    assert parsed == [api_key] and head.key is not None
    assert call.key is head.key and call.body == b"{}"
    assert (call.codec, call.model, call.version, call.api_key, call.headers) == (
        head.codec,
        head.model,
        head.version,
        head.api_key,
        head.headers,
    )


@pytest.fixture
def both(settings: Settings) -> Iterator[tuple[TestClient, TestClient, dict[str, str]]]:
    """The app with and without the lean route, one keyed tenant (same answers for
    the same row), inline once cached."""
    settings = settings.model_copy(
        update={"tenant_cache_seconds": 60.0, "batching_max_delay_ms": 0.0}
    )
    fast_app, plain_app = create_app(settings), create_app(settings)
    plain_app.fast_inference_routes = False  # type: ignore[attr-defined]
    with TestClient(fast_app) as fast, TestClient(plain_app) as plain:
        created = fast.post(
            "/admin/tenants",
            json={"name": "k", "noise_mode": "keyed"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        yield fast, plain, {"Authorization": f"Bearer {created.json()['api_key']}"}


def test_answers_and_all_their_headers_match_fastapis(
    both: tuple[TestClient, TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, plain, key = both
    served: list[str] = []
    route = fastpath.match
    monkeypatch.setattr(fastpath, "match", lambda path: served.append(path) or route(path))
    binary, binary_headers = encode_v2_request(np.array([ROW_TOY], dtype=np.float32), "input")
    v2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW_TOY}]}
    cases = [
        ("/v1/models/toy/predict", orjson.dumps({"instances": [ROW_TOY]}), key),
        ("/v2/models/toy/infer", orjson.dumps(v2), key),
        ("/v2/models/toy/infer", binary, {**key, **binary_headers}),
        ("/v1/models/toy/predict", b"{oops", key),
        ("/v1/models/toy/predict", orjson.dumps({"instances": [ROW_TOY]}), {}),
    ]
    for _ in range(2):  # the first request of a tenant loads it; the next run inline
        for path, body, headers in cases:
            a, b = (
                fast.post(path, content=body, headers=headers),
                plain.post(path, content=body, headers=headers),
            )
            assert (a.status_code, a.content) == (b.status_code, b.content), path
            assert a.headers.multi_items() == b.headers.multi_items(), path
    assert len(served) == 2 * len(cases)


def _count_hops(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The thread-pool hops of the inference routes from now on, one entry each."""
    hops: list[object] = []
    hop = inference.run_in_threadpool

    async def counted(*args: object) -> object:
        hops.append(args)
        return await hop(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "run_in_threadpool", counted)
    return hops


def test_a_cached_tenant_runs_inline_until_its_entry_expires(
    both: tuple[TestClient, TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No margin is asked of the tenant cache: the tenant found is the one the data
    plane is given, so a request runs inline for as long as its entry is fresh."""
    fast, _, key = both
    hops = _count_hops(monkeypatch)
    body = orjson.dumps({"instances": [ROW_TOY]})
    assert fast.post("/v1/models/toy/predict", content=body, headers=key).status_code == 200
    store = fast.app.state.services.store  # type: ignore[attr-defined]
    (entry,) = store._cache.values()
    # 10 ms before the entry expires: still fresh, still inline.
    monkeypatch.setattr(store, "_clock", lambda: entry.loaded_at + store._cache_ttl - 0.01)
    hops.clear()
    assert fast.post("/v1/models/toy/predict", content=body, headers=key).status_code == 200
    assert not hops


def test_an_expired_entry_is_looked_up_on_the_event_loop_and_the_request_runs_inline(
    both: tuple[TestClient, TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key answered before whose entry expired while it was idle: the request waits
    for the key's lookup (on the store's refresh thread) on the event loop, then runs
    inline; no pool thread per request."""
    fast, _, key = both
    hops = _count_hops(monkeypatch)
    body = orjson.dumps({"instances": [ROW_TOY]})
    assert fast.post("/v1/models/toy/predict", content=body, headers=key).status_code == 200
    store = fast.app.state.services.store  # type: ignore[attr-defined]
    (entry,) = store._cache.values()
    expired_at = entry.loaded_at + store._cache_ttl + 5.0  # idle past the TTL
    monkeypatch.setattr(store, "_clock", lambda: expired_at)
    hops.clear()
    assert fast.post("/v1/models/toy/predict", content=body, headers=key).status_code == 200
    assert not hops
    (refreshed,) = store._cache.values()
    assert refreshed.loaded_at == expired_at  # looked up again, not served stale
