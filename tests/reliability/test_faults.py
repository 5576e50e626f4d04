"""Faults: the tenant database going away and coming back, broken model files at
start-up, SIGTERM while requests are in flight, and restarts."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import cli
from service.commands import serve as serve_command
from service.settings import Settings

from ..conftest import ADMIN_TOKEN, ROW_TOY, bearer
from ..onnx_factory import write_linear_model
from .conftest import FakeClock, PostgresDatabase, build_app
from .leaks import internals_in
from .server import finish_request, running_server, send_request_head, server_env, start_server

GRACE_SECONDS = 60.0
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIVE_ADMIN = {"Authorization": "Bearer reliability-admin-token-of-32-characters-or-more"}
PREDICT = "/v1/models/toy/predict"
BODY = {"instances": [ROW_TOY]}


# --- the tenant database goes away while serving -------------------------------


def _outage_settings(settings: Settings, database_url: str) -> Settings:
    return settings.model_copy(
        update={
            "database_url": database_url,
            "tenant_cache_seconds": 0.0,  # every request asks the database
            "stale_tenant_grace_seconds": GRACE_SECONDS,
        }
    )


def _check_outage_cycle(
    settings: Settings, go_away: Callable[[FastAPI], None], come_back: Callable[[], None]
) -> None:
    clock = FakeClock()
    app = build_app(settings, clock=clock)
    with TestClient(app) as client:
        key = client.post(
            "/admin/tenants",
            json={"name": "clinic", "noise_mode": "keyed", "temperature": 3.0},
            headers=ADMIN,
        ).json()["api_key"]
        before = client.post(PREDICT, json=BODY, headers=bearer(key))
        assert before.status_code == 200
        assert client.get("/v2/health/ready").status_code == 200

        go_away(app)

        # Known tenant: served from its last known configuration (same keyed answer).
        during = client.post(PREDICT, json=BODY, headers=bearer(key))
        assert during.status_code == 200
        assert during.json() == before.json()
        # Readiness tells the load balancer; unknown keys and admin calls cannot be
        # answered without the database: 503, with a clean message.
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        for response in (
            client.post(PREDICT, json=BODY, headers=bearer(forged)),
            client.get("/admin/tenants", headers=ADMIN),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "unavailable"
            assert internals_in(response.text) == []

        # The last known configuration is only good for the grace period.
        clock.advance(GRACE_SECONDS / 2)
        assert client.post(PREDICT, json=BODY, headers=bearer(key)).status_code == 200
        clock.advance(GRACE_SECONDS)
        expired = client.post(PREDICT, json=BODY, headers=bearer(key))
        assert expired.status_code == 503
        assert internals_in(expired.text) == []

        come_back()

        assert client.get("/v2/health/ready").status_code == 200
        after = client.post(PREDICT, json=BODY, headers=bearer(key))
        assert after.status_code == 200
        assert after.json() == before.json()
        names = [t["name"] for t in client.get("/admin/tenants", headers=ADMIN).json()]
        assert names == ["clinic"]


def test_sqlite_outage_serves_known_tenants_for_the_grace_then_recovers(
    settings: Settings, tmp_path: Path
) -> None:
    directory = tmp_path / "db"
    outage = _outage_settings(settings, f"sqlite:///{directory / 'tenants.db'}")

    def go_away(app: FastAPI) -> None:
        shutil.move(directory, tmp_path / "moved-away")
        # Pooled connections keep the moved file open; drop them, as a lost disk would.
        app.state.services.store.engine.dispose()

    def come_back() -> None:
        shutil.move(tmp_path / "moved-away", directory)

    _check_outage_cycle(outage, go_away, come_back)


@pytest.mark.postgres
def test_postgres_outage_serves_known_tenants_for_the_grace_then_recovers(
    settings: Settings, postgres_database: PostgresDatabase
) -> None:
    outage = _outage_settings(settings, postgres_database.url)
    _check_outage_cycle(
        outage, lambda _app: postgres_database.go_away(), postgres_database.come_back
    )


def test_a_failed_admin_write_during_an_outage_keeps_known_tenants_served(
    settings: Settings, tmp_path: Path
) -> None:
    directory = tmp_path / "db"
    outage = _outage_settings(settings, f"sqlite:///{directory / 'tenants.db'}")
    app = build_app(outage, clock=FakeClock())
    with TestClient(app) as client:
        key = client.post("/admin/tenants", json={"name": "clinic"}, headers=ADMIN).json()[
            "api_key"
        ]
        assert client.post(PREDICT, json=BODY, headers=bearer(key)).status_code == 200
        shutil.move(directory, tmp_path / "moved-away")
        app.state.services.store.engine.dispose()
        refused = client.post("/admin/tenants", json={"name": "new"}, headers=ADMIN)
        assert refused.status_code == 503
        assert client.post(PREDICT, json=BODY, headers=bearer(key)).status_code == 200


@pytest.mark.postgres
@pytest.mark.slow
def test_live_server_rides_out_a_postgres_outage(
    tmp_path: Path, postgres_database: PostgresDatabase
) -> None:
    models = tmp_path / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    with running_server(tmp_path, models_dir=models, database_url=postgres_database.url) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            key = client.post(
                "/admin/tenants", json={"name": "clinic", "noise_mode": "keyed"}, headers=LIVE_ADMIN
            ).json()["api_key"]
            before = client.post(PREDICT, json=BODY, headers=bearer(key))
            assert before.status_code == 200

            postgres_database.go_away()
            during = client.post(PREDICT, json=BODY, headers=bearer(key))
            assert during.status_code == 200 and during.json() == before.json()
            assert client.get("/v2/health/ready").status_code == 503
            assert client.get("/admin/tenants", headers=LIVE_ADMIN).status_code == 503

            postgres_database.come_back()
            assert client.get("/v2/health/ready").status_code == 200
            after = client.post(PREDICT, json=BODY, headers=bearer(key))
            assert after.status_code == 200 and after.json() == before.json()
        assert server.stop() == 0
    assert "Traceback" not in server.output()


# --- broken models fail the start with one clear line ---------------------------


def _missing_dir(models: Path) -> None:
    shutil.rmtree(models)


def _corrupt_onnx(models: Path) -> None:
    (models / "toy" / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf\xff" * 10)


def _truncated_onnx(models: Path) -> None:
    path = models / "toy" / "model.onnx"
    path.write_bytes(path.read_bytes()[:40])


def _missing_onnx(models: Path) -> None:
    (models / "toy" / "model.onnx").unlink()


def _manifest_not_json(models: Path) -> None:
    (models / "toy" / "manifest.json").write_text("{not json")


def _manifest_shape_mismatch(models: Path) -> None:
    path = models / "toy" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["input"]["shape"] = [-1, 7]
    path.write_text(json.dumps(manifest))


BREAKAGES: dict[str, Callable[[Path], None]] = {
    "missing models dir": _missing_dir,
    "corrupt model.onnx": _corrupt_onnx,
    "truncated model.onnx": _truncated_onnx,
    "missing model.onnx": _missing_onnx,
    "manifest not JSON": _manifest_not_json,
    "manifest shape != graph": _manifest_shape_mismatch,
}


def _serve_env(monkeypatch: pytest.MonkeyPatch, models: Path, workdir: Path) -> None:
    for name, value in server_env(models, f"sqlite:///{workdir / 't.db'}", 1, "x", 1).items():
        if name.startswith("DYNANOISE_"):
            monkeypatch.setenv(name, value)


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_model_fails_start_with_one_clear_line(
    breakage: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    models = tmp_path / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    BREAKAGES[breakage](models)
    _serve_env(monkeypatch, models, tmp_path)
    monkeypatch.chdir(tmp_path)

    def must_not_serve(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server started on a broken model")

    monkeypatch.setattr(serve_command.uvicorn, "run", must_not_serve)
    code = cli.main(["serve"])
    output = "".join(capfd.readouterr())
    assert code != 0, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("dynanoise: cannot start: ")
    assert str(models) in lines[0]  # names the path at fault


@pytest.mark.slow
def test_serve_command_on_a_corrupt_model_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    # The real process, end to end: logging set-up, imports and exit status included.
    models = tmp_path / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    _corrupt_onnx(models)
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        cwd=tmp_path,
        env=server_env(models, f"sqlite:///{tmp_path / 't.db'}", 1, "x", 1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dynanoise: cannot start: ") and "model.onnx" in lines[0]


# --- SIGTERM drains in-flight requests ------------------------------------------


def _admin_key(server_url: str) -> str:
    response = httpx.post(
        f"{server_url}/admin/tenants", json={"name": "acme"}, headers=LIVE_ADMIN, timeout=30
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path, workers: int) -> None:
    models = tmp_path / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    server = start_server(
        tmp_path, models_dir=models, database_url=f"sqlite:///{tmp_path / 't.db'}", workers=workers
    )
    try:
        key = _admin_key(server.url)
        body = json.dumps(BODY).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        # Each request has its head read and the app waiting for the body (100 Continue):
        # in flight for certain when the signal lands.
        pending = [send_request_head(server.port, PREDICT, headers, len(body)) for _ in range(8)]
        server.signal(signal.SIGTERM)
        answers = [finish_request(sock, body) for sock in pending]
        assert [status for status, _ in answers] == [200] * 8
        for _, payload in answers:
            assert len(json.loads(payload)["predictions"]) == 1
        assert server.wait(timeout=60) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert "Traceback" not in server.output()


# --- a restart loses no tenant ----------------------------------------------------


@pytest.mark.slow
def test_restart_keeps_every_tenant_even_when_a_stuck_client_delays_shutdown(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    write_linear_model(models, name="wide", n_features=6, n_classes=5, seed=1)
    database_url = f"sqlite:///{tmp_path / 'tenants.db'}"
    tenants = {
        "keyed": {"noise_mode": "keyed", "base_variance": 1.5, "temperature": 4.0},
        "limited": {"allowed_models": ["toy"], "rate_limit_per_second": 1000.0},
        "rotated": {"ensemble_size": 3, "sensitivity": "margin"},
    }
    first = start_server(
        tmp_path,
        models_dir=models,
        database_url=database_url,
        extra_env={"DYNANOISE_GRACEFUL_SHUTDOWN_SECONDS": "1"},
    )
    try:
        with httpx.Client(base_url=first.url, headers=LIVE_ADMIN, timeout=30) as admin:
            keys = {
                name: admin.post("/admin/tenants", json={"name": name, **params}).json()["api_key"]
                for name, params in tenants.items()
            }
            old_rotated = keys["rotated"]
            keys["rotated"] = admin.post("/admin/tenants/rotated/rotate-key").json()["api_key"]
            listing = admin.get("/admin/tenants").json()
            keyed_answer = admin.post(PREDICT, json=BODY, headers=bearer(keys["keyed"])).json()
        # A client that sends a request head and never its body cannot hold the
        # shutdown past DYNANOISE_GRACEFUL_SHUTDOWN_SECONDS.
        stuck = send_request_head(
            first.port, PREDICT, {"Authorization": f"Bearer {keys['keyed']}"}, body_length=100
        )
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        stuck.close()
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.process.wait()

    with (
        running_server(tmp_path, models_dir=models, database_url=database_url) as second,
        httpx.Client(base_url=second.url, headers=LIVE_ADMIN, timeout=30) as admin,
    ):
        assert admin.get("/admin/tenants").json() == listing
        for key in keys.values():
            assert admin.post(PREDICT, json=BODY, headers=bearer(key)).status_code == 200
        assert admin.post(PREDICT, json=BODY, headers=bearer(old_rotated)).status_code == 401
        again = admin.post(PREDICT, json=BODY, headers=bearer(keys["keyed"])).json()
        assert again == keyed_answer
