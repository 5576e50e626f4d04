"""The model repository extension (/v2/repository): index, load and unload without a
restart, broken models refused while the others keep serving, requests in flight
finishing on the old version, and other processes following through the directory."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.runtime.registry import DISABLED_MARKER, ModelRegistry
from service.settings import Settings

from ..conftest import ADMIN_TOKEN, ROW_TOY, Harness, bearer
from ..onnx_factory import write_linear_model

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def repo(settings: Settings) -> Iterator[Harness]:
    """The app with polling off: only the repository API changes its models."""
    quiet = settings.model_copy(update={"model_poll_seconds": 0.0})
    with TestClient(create_app(quiet)) as client:
        yield Harness(client, quiet)


def _predict(client: TestClient, key: str, model: str, rows: list[list[float]]) -> tuple[int, dict]:
    response = client.post(
        f"/v1/models/{model}/predict", json={"instances": rows}, headers=bearer(key)
    )
    return response.status_code, response.json()


def _infer_v2(client: TestClient, key: str, model: str, rows: list[list[float]]) -> int:
    body = {
        "inputs": [
            {"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}
        ]
    }
    return client.post(f"/v2/models/{model}/infer", json=body, headers=bearer(key)).status_code


def _index(client: TestClient, **body: object) -> dict[str, dict]:
    response = client.post("/v2/repository/index", json=body or None, headers=ADMIN)
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()}


def _corrupt_onnx(model_dir: Path) -> None:
    (model_dir / "model.onnx").write_bytes(b"this is not an onnx graph")


def _bad_manifest(model_dir: Path) -> None:
    (model_dir / "manifest.json").write_text('{"name": "oops", "labels": ["only one"]')


def _wrong_shape(model_dir: Path) -> None:
    manifest = model_dir / "manifest.json"
    manifest.write_text(manifest.read_text().replace("[-1, 4]", "[-1, 7]"))


BREAKAGES: dict[str, Callable[[Path], None]] = {
    "corrupt onnx": _corrupt_onnx,
    "bad manifest": _bad_manifest,
    "input shape not the graph's": _wrong_shape,
}


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the poller did not catch up"
        time.sleep(0.05)


def test_index_lists_served_and_unloaded_models(repo: Harness, models_dir: Path) -> None:
    write_linear_model(models_dir, name="late", n_features=4, n_classes=2)
    entries = _index(repo.client)
    assert entries["toy"] == {"name": "toy", "version": "1", "state": "READY", "reason": ""}
    assert entries["wide"]["state"] == "READY"
    assert entries["late"] == {
        "name": "late",
        "version": None,
        "state": "UNAVAILABLE",
        "reason": "not loaded",
    }
    assert set(_index(repo.client, ready=True)) == {"toy", "wide"}


def test_load_serves_a_model_added_after_start(repo: Harness, models_dir: Path) -> None:
    key = repo.add_tenant("acme")
    c = repo.client
    write_linear_model(models_dir, name="late", n_features=4, n_classes=2, seed=3)
    assert _predict(c, key, "late", [ROW_TOY])[0] == 404

    response = c.post("/v2/repository/models/late/load", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "late", "load": True}
    status, body = _predict(c, key, "late", [ROW_TOY, ROW_TOY])
    assert status == 200 and len(body["predictions"][0]["probabilities"]) == 2
    assert _infer_v2(c, key, "late", [ROW_TOY]) == 200
    assert "late" in [m["name"] for m in c.get("/v1/models").json()]
    assert c.get("/v2/models/late").json()["versions"] == ["1"]
    assert c.get("/v2/models/late/ready").status_code == 200
    assert _index(c)["late"]["state"] == "READY"


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=list(BREAKAGES))
def test_a_broken_new_model_is_refused_and_the_others_keep_serving(
    repo: Harness, models_dir: Path, breakage: Callable[[Path], None]
) -> None:
    key = repo.add_tenant("acme")
    c = repo.client
    breakage(write_linear_model(models_dir, name="late", n_features=4, n_classes=2))

    response = c.post("/v2/repository/models/late/load", headers=ADMIN)
    assert response.status_code == 422, response.text
    message = response.text
    assert "late" in message and "\\n" not in message
    assert _predict(c, key, "late", [ROW_TOY])[0] == 404
    assert _predict(c, key, "toy", [ROW_TOY])[0] == 200
    assert _index(c)["late"]["state"] == "UNAVAILABLE"
    assert _index(c)["late"]["reason"]


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=list(BREAKAGES))
def test_a_broken_replacement_keeps_the_old_version_serving(
    repo: Harness, models_dir: Path, breakage: Callable[[Path], None]
) -> None:
    key = repo.add_tenant("acme")
    c = repo.client
    breakage(models_dir / "toy")

    assert c.post("/v2/repository/models/toy/load", headers=ADMIN).status_code == 422
    status, body = _predict(c, key, "toy", [ROW_TOY])
    assert status == 200 and len(body["predictions"][0]["probabilities"]) == 3
    entry = _index(c)["toy"]
    assert entry["state"] == "READY" and entry["version"] == "1"
    assert entry["reason"].startswith("serving version 1: the files now in its directory")


def test_replacing_a_model_finishes_requests_in_flight_on_the_old_version(
    repo: Harness, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = repo.add_tenant("acme")
    c = repo.client
    old = c.app.state.services.registry.get("toy")  # type: ignore[attr-defined]
    entered, release = threading.Event(), threading.Event()
    run_old = old.logits

    def slow_logits(batch: np.ndarray) -> np.ndarray:
        entered.set()
        release.wait(10)
        return run_old(batch)

    monkeypatch.setattr(old, "logits", slow_logits)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(_predict, c, key, "toy", [ROW_TOY])
        assert entered.wait(10)
        write_linear_model(models_dir, name="toy", n_features=4, n_classes=2, seed=5, version="2")
        assert c.post("/v2/repository/models/toy/load", headers=ADMIN).status_code == 200
        status, body = _predict(c, key, "toy", [ROW_TOY])
        assert status == 200 and body["model_version"] == "2"
        assert len(body["predictions"][0]["probabilities"]) == 2
        release.set()
        status, body = in_flight.result(timeout=10)
    assert status == 200 and body["model_version"] == "1"
    assert len(body["predictions"][0]["probabilities"]) == 3


def test_unload_stops_serving_until_loaded_again(repo: Harness, models_dir: Path) -> None:
    key = repo.add_tenant("acme")
    c = repo.client
    response = c.post("/v2/repository/models/toy/unload", headers=ADMIN)
    assert response.status_code == 200 and response.json() == {"name": "toy", "unload": True}

    status, body = _predict(c, key, "toy", [ROW_TOY])
    assert status == 404 and "unknown model" in str(body)
    assert _infer_v2(c, key, "toy", [ROW_TOY]) == 404
    assert c.get("/v2/models/toy").status_code == 404
    assert [m["name"] for m in c.get("/v1/models").json()] == ["wide"]
    assert _index(c)["toy"]["reason"] == "unloaded"
    assert (models_dir / "toy" / DISABLED_MARKER).exists()
    assert c.post("/v2/repository/models/toy/unload", headers=ADMIN).status_code == 404

    assert c.post("/v2/repository/models/toy/load", headers=ADMIN).status_code == 200
    assert not (models_dir / "toy" / DISABLED_MARKER).exists()
    assert _predict(c, key, "toy", [ROW_TOY])[0] == 200


@pytest.mark.parametrize("name", ["nosuchmodel", "-dash", "a" * 65])
def test_load_of_a_model_not_in_the_repository_is_404(repo: Harness, name: str) -> None:
    response = repo.client.post(f"/v2/repository/models/{name}/load", headers=ADMIN)
    assert response.status_code == 404, response.text


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (path, headers)
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/toy/load",
            "/v2/repository/models/toy/unload",
        )
        for headers in ({}, {"Authorization": "Bearer not-the-admin-token"})
    ],
)
def test_repository_needs_the_admin_token(
    repo: Harness, path: str, headers: dict[str, str]
) -> None:
    assert repo.client.post(path, headers=headers).status_code == 401
    assert "toy" in repo.client.app.state.services.registry  # type: ignore[attr-defined]


def test_a_tenant_key_is_not_an_admin_token(repo: Harness) -> None:
    key = repo.add_tenant("acme")
    response = repo.client.post("/v2/repository/models/toy/unload", headers=bearer(key))
    assert response.status_code == 401


def test_another_instance_follows_the_directory(settings: Settings, models_dir: Path) -> None:
    polling = settings.model_copy(update={"model_poll_seconds": 0.05})
    with (
        TestClient(create_app(polling)) as first,
        TestClient(create_app(polling)) as second,
    ):
        harness = Harness(first, polling)
        key = harness.add_tenant("acme")

        def serves(client: TestClient, model: str) -> bool:
            return _predict(client, key, model, [ROW_TOY])[0] == 200

        write_linear_model(models_dir, name="late", n_features=4, n_classes=2)
        _wait_for(lambda: serves(first, "late") and serves(second, "late"))

        assert first.post("/v2/repository/models/late/unload", headers=ADMIN).status_code == 200
        assert not serves(first, "late")
        _wait_for(lambda: not serves(second, "late"))
        time.sleep(0.2)  # polls after the marker leave it unloaded
        assert not serves(first, "late")

        assert first.post("/v2/repository/models/late/load", headers=ADMIN).status_code == 200
        _wait_for(lambda: serves(second, "late"))

        write_linear_model(models_dir, name="toy", n_features=4, n_classes=2, version="2")
        _wait_for(lambda: second.get("/v2/models/toy").json()["versions"] == ["2"])

        _corrupt_onnx(models_dir / "wide")
        time.sleep(0.3)
        assert second.get("/v2/models/wide").status_code == 200  # the old version stays

        for path in sorted((models_dir / "late").iterdir()):
            path.unlink()
        (models_dir / "late").rmdir()
        _wait_for(lambda: not serves(first, "late") and not serves(second, "late"))


def test_a_broken_change_is_warned_about_once(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry.load(models_dir)
    _corrupt_onnx(models_dir / "toy")
    with caplog.at_level(logging.WARNING, logger="dynanoise.models"):
        registry.poll()
        registry.poll()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping version 1 of toy" in warnings[0].getMessage()
    assert registry.get("toy").manifest.version == "1"

    write_linear_model(models_dir, name="toy", n_features=4, n_classes=3, version="2")
    registry.poll()
    assert registry.get("toy").manifest.version == "2"
