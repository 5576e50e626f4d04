"""Shared fixtures: settings on a temporary database and test models, the app, keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

from .onnx_factory import write_linear_model

ADMIN_TOKEN = "test-admin-token-of-32-characters-or-more"
ROW_TOY = [0.5, -1.0, 2.0, 0.25]  # one input of the `toy` model


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    write_linear_model(directory, name="toy", n_features=4, n_classes=3, seed=0)
    write_linear_model(directory, name="wide", n_features=6, n_classes=5, seed=1)
    return directory


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'tenants.db'}",
        models_dir=models_dir,
        admin_token=ADMIN_TOKEN,
        max_batch=16,
        max_body_bytes=64 * 1024,
        tenant_cache_seconds=0.0,
    )


@dataclass
class Harness:
    client: TestClient
    settings: Settings

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def add_tenant(self, name: str, **params: object) -> str:
        response = self.client.post(
            "/admin/tenants", json={"name": name, **params}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        key: str = response.json()["api_key"]
        return key


@pytest.fixture
def harness(settings: Settings) -> Iterator[Harness]:
    with TestClient(create_app(settings)) as client:
        yield Harness(client, settings)


@pytest.fixture
def clean_harness(settings: Settings) -> Iterator[Harness]:
    """The app with DYNANOISE_ALLOW_CLEAN_OUTPUTS set: tenants with base_variance 0 (no
    noise, clean probabilities) may be created and served, as in benchmarks."""
    allowed = settings.model_copy(update={"allow_clean_outputs": True})
    with TestClient(create_app(allowed)) as client:
        yield Harness(client, allowed)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
