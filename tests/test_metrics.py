"""Prometheus metrics: the histograms move after requests, bulk observation is exact,
and the metrics are served by a listener of their own, never on the public port."""

from __future__ import annotations

import hmac
import logging
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram
from pydantic import ValidationError

from bench.harness.launcher import free_port, running, start_service
from service.api import metrics_listener as metrics_server
from service.api.metrics_listener import MetricsListenerError, MetricsServer, metrics_app
from service.app import create_app
from service.defense.sensitivity import sensitivity
from service.metrics import SENSITIVITY_BUCKETS, ServiceMetrics, observe_many
from service.settings import Settings

from .conftest import ADMIN_TOKEN, ROW_TOY, Harness, bearer
from .onnx_factory import linear_logits, write_linear_model
from .scrape import scrape


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        matches_name = line.startswith(name + "{") or line.startswith(name + " ")
        if matches_name and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_scrape_shows_histograms_moving(harness: Harness) -> None:
    key = harness.add_tenant("acme")
    before = scrape(harness.client)
    for _ in range(3):
        harness.client.post(
            "/v1/models/toy/predict", json={"instances": [ROW_TOY] * 4}, headers=bearer(key)
        )
    harness.client.post("/v1/models/toy/predict", json={"instances": []}, headers=bearer(key))
    after = scrape(harness.client)
    assert _sample(after, "dynanoise_sensitivity_count", tenant="acme", model="toy") == 12
    assert _sample(before, "dynanoise_sensitivity_count", tenant="acme") == 0
    assert _sample(after, "dynanoise_noise_std_count", tenant="acme") == 12
    assert _sample(after, "dynanoise_samples_total", tenant="acme") == 12
    assert _sample(after, "dynanoise_requests_total", tenant="acme", code="200") == 3
    assert _sample(after, "dynanoise_requests_total", tenant="acme", code="422") == 1
    assert (
        _sample(after, "dynanoise_request_duration_seconds_count", tenant="acme", endpoint="v1")
        == 4
    )
    assert _sample(after, "dynanoise_inference_duration_seconds_count", model="toy") == 3
    assert _sample(after, "dynanoise_defense_duration_seconds_count", tenant="acme") == 3
    assert "dynanoise_label_flips_total" in after or "dynanoise_label_flips" in after


def test_labels_never_come_from_raw_request_strings(harness: Harness) -> None:
    harness.client.post(
        "/v1/models/evil-model-name/predict",
        json={"instances": [ROW_TOY]},
        headers=bearer("dn_attacker_supplied"),
    )
    text = scrape(harness.client)
    assert "evil-model-name" not in text and "attacker" not in text
    assert re.search(r'dynanoise_requests_total\{code="401",model="-",tenant="-"\} 1', text)


def test_observe_many_equals_observe_one_by_one() -> None:
    values = np.random.default_rng(0).uniform(0, 1, size=1000)
    values[:10] = [0.0, 0.05, 0.1, 1.0, 0.5, 0.05000001, 0.95, 0.999, 0.25, 0.75]
    bulk = Histogram("h", "h", buckets=SENSITIVITY_BUCKETS, registry=CollectorRegistry())
    single = Histogram("h", "h", buckets=SENSITIVITY_BUCKETS, registry=CollectorRegistry())
    observe_many(bulk, values)
    for value in values:
        single.observe(float(value))

    def samples(h: Histogram) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for m in h.collect()
            for s in m.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(bulk), samples(single)
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) < 1e-9, k


# --- the metrics stay off the public port --------------------------------------------


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "fastapi"])
def test_the_public_port_answers_404_for_metrics(settings: Settings, lean: bool) -> None:
    app = create_app(settings)
    app.fast_inference_routes = lean  # type: ignore[attr-defined]
    with TestClient(app) as client:
        for path in ("/metrics", "/metrics/", "/metrics?name[]=dynanoise_requests_total"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}
        assert client.head("/metrics").status_code == 404
        assert client.post("/metrics", content=b"").status_code == 404
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_a_before_and_after_read_of_the_public_port_no_longer_yields_r(
    harness: Harness, models_dir: Path
) -> None:
    """The leak: the difference of dynanoise_sensitivity_sum around one request was
    that request's clean sensitivity R, readable by anyone on the inference port."""
    key = harness.add_tenant("acme")
    logits = linear_logits(models_dir / "toy", np.asarray([ROW_TOY], dtype=np.float32))
    r = float(sensitivity(logits)[0])
    public_before = harness.client.get("/metrics")
    listener_before = scrape(harness.client)
    answer = harness.client.post(
        "/v1/models/toy/predict", json={"instances": [ROW_TOY]}, headers=bearer(key)
    )
    assert answer.status_code == 200
    public_after = harness.client.get("/metrics")
    listener_after = scrape(harness.client)

    # The listener (another port, optionally token-gated) still measures R exactly:
    # the method below would find the leak if the public port served the metrics.
    moved = _sample(listener_after, "dynanoise_sensitivity_sum", tenant="acme") - _sample(
        listener_before, "dynanoise_sensitivity_sum", tenant="acme"
    )
    assert moved == pytest.approx(r, abs=1e-6)
    # The public port answers the same 404 before and after, with nothing of the metrics.
    assert public_before.status_code == public_after.status_code == 404
    assert public_before.content == public_after.content
    for body in (public_before.text, public_after.text):
        assert "dynanoise_" not in body and "acme" not in body and "sensitivity" not in body


# --- the metrics listener ---------------------------------------------------------------

TOKEN = "metrics-scrape-token-of-32-characters-or-more"


def _listener(token: str | None = None) -> TestClient:
    metrics = ServiceMetrics()
    metrics.observe_request("toy", "acme", "v1", 200, 0.001)
    return TestClient(metrics_app(metrics, token))


def test_the_listener_serves_the_text_format() -> None:
    response = _listener().get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE dynanoise_sensitivity histogram" in response.text
    assert 'dynanoise_requests_total{code="200",model="toy",tenant="acme"} 1.0' in response.text
    head = _listener().head("/metrics")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == response.headers["content-type"]


def test_the_listener_answers_other_paths_and_methods_with_json_errors() -> None:
    client = _listener()
    for path in ("/", "/metrics/", "/v2/health/ready", "/admin/tenants"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    refused = client.post("/metrics", content=b"x")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    assert refused.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Bearer wrong-token", 401),
        (f"Bearer {TOKEN}x", 401),
        (f"Bearer {TOKEN[:-1]}", 401),
        (f"Basic {TOKEN}", 401),
        (TOKEN, 401),
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
    ],
)
def test_the_listener_requires_the_token_when_one_is_set(
    authorization: str | None, status: int
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = _listener(TOKEN).get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json() == {
            "error": {"code": "unauthorized", "message": "missing or invalid metrics token"}
        }
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "dynanoise_" not in response.text and "acme" not in response.text
    else:
        assert "dynanoise_requests_total" in response.text


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(metrics_server.hmac, "compare_digest", spy)
    client = _listener(TOKEN)
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers=bearer(TOKEN)).status_code == 200
    assert compared == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_a_failing_render_is_a_json_500_without_internals() -> None:
    def broken() -> tuple[bytes, str]:
        raise OSError("/app/metrics/prometheus/counter_7.db: corrupt")

    response = TestClient(metrics_server.MetricsApp(broken)).get("/metrics")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal error"}}


def test_the_listener_on_a_socket_starts_serves_and_stops() -> None:
    server = MetricsServer(metrics_app(ServiceMetrics(), TOKEN), "127.0.0.1", 0)
    with server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert httpx.get(server.url, timeout=10).status_code == 401
        scraped = httpx.get(server.url, headers=bearer(TOKEN), timeout=10)
        assert scraped.status_code == 200 and "dynanoise_samples" in scraped.text
        assert "server" not in scraped.headers
        with pytest.raises(MetricsListenerError, match="cannot listen for metrics"):
            MetricsServer(metrics_app(ServiceMetrics()), "127.0.0.1", server.port)
    assert not server._thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=5)


def test_metrics_settings() -> None:
    default = Settings()
    assert default.metrics_port == 8002 and default.metrics_port != default.port
    assert default.metrics_token is None
    assert default.metrics_bind_host == default.host
    assert Settings(host="0.0.0.0").metrics_bind_host == "0.0.0.0"
    assert Settings(host="0.0.0.0", metrics_host="127.0.0.1").metrics_bind_host == "127.0.0.1"
    empty = Settings(metrics_host="", metrics_token="")
    assert empty.metrics_host is None and empty.metrics_token is None
    assert Settings(metrics_port=0).metrics_port == 0
    with pytest.raises(ValidationError, match="metrics_port must differ from port"):
        Settings(port=9000, metrics_port=9000)


def test_serve_fails_at_once_when_the_metrics_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service import cli
    from service.commands import serve as serve_command

    write_linear_model(tmp_path / "models", name="toy")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    for name, value in {
        "DYNANOISE_MODELS_DIR": str(tmp_path / "models"),
        "DYNANOISE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "DYNANOISE_HOST": "127.0.0.1",
        "DYNANOISE_PORT": str(free_port()),
        "DYNANOISE_METRICS_PORT": str(taken.getsockname()[1]),
        "DYNANOISE_CREATE_DEMO_TENANT": "false",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    def must_not_serve(*args: object, **kwargs: object) -> None:
        raise AssertionError("uvicorn started without its metrics listener")

    monkeypatch.setattr(serve_command.uvicorn, "run", must_not_serve)
    try:
        assert cli.main(["serve"]) == 2
    finally:
        taken.close()
    error = capsys.readouterr().err
    assert error.startswith("dynanoise: cannot start: cannot listen for metrics on 127.0.0.1:")


@pytest.mark.parametrize("workers", [1, 2])
def test_dynanoise_serve_runs_one_metrics_listener_beside_its_workers(
    tmp_path: Path, workers: int
) -> None:
    """The real command: the public port has no /metrics; the listener needs the
    token, counts the requests of every worker, is started once (by the process
    that runs uvicorn, not by each worker) and is gone after SIGTERM."""
    write_linear_model(tmp_path / "models", name="toy")
    metrics_port = free_port()
    server = start_service(
        tmp_path,
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        workers=workers,
        admin_token=ADMIN_TOKEN,
        extra_env={
            "DYNANOISE_METRICS_PORT": str(metrics_port),
            "DYNANOISE_METRICS_TOKEN": TOKEN,
            "DYNANOISE_TENANT_CACHE_SECONDS": "0",
        },
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with running(server, stop_timeout=30.0):
        created = httpx.post(
            f"{server.url}/admin/tenants",
            json={"name": "acme"},
            headers=bearer(ADMIN_TOKEN),
            timeout=30,
        )
        key = created.json()["api_key"]
        sent = 24
        for _ in range(sent):
            with httpx.Client() as fresh:  # fresh connections: any worker may answer
                answer = fresh.post(
                    f"{server.url}/v1/models/toy/predict",
                    json={"instances": [ROW_TOY]},
                    headers=bearer(key),
                    timeout=30,
                )
                assert answer.status_code == 200
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 404
        assert httpx.get(url, timeout=10).status_code == 401
        scraped = httpx.get(url, headers=bearer(TOKEN), timeout=10)
        assert scraped.status_code == 200
        text = scraped.text
        assert _sample(text, "dynanoise_requests_total", tenant="acme", code="200") == sent
        assert _sample(text, "dynanoise_sensitivity_count", tenant="acme") == sent
        assert server.stop(timeout=30.0) == 0
    log = server.output()
    assert log.count(f"metrics on {url}") == 1, log
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=5)


def test_a_listener_without_a_token_off_loopback_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert metrics_server._is_loopback("127.0.0.1") and metrics_server._is_loopback("::1")
    assert metrics_server._is_loopback("localhost")
    assert not metrics_server._is_loopback("0.0.0.0") and not metrics_server._is_loopback("::")
    assert not metrics_server._is_loopback("dynanoise.internal")
    monkeypatch.setattr(metrics_server, "_is_loopback", lambda host: False)
    for token, warned in ((None, True), (TOKEN, False)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dynanoise.metrics"):
            MetricsServer(metrics_app(ServiceMetrics(), token), "127.0.0.1", 0).start().stop()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert bool(warnings) is warned, caplog.text
        assert "metrics on http://127.0.0.1:" in caplog.text
