"""Scale-out: several `dynanoise serve` processes over one tenant database behave as
one service. Tenants, parameter changes, key rotation and removal made through one
replica hold on every other, on replicas started later, and across restarts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import httpx
import pytest

from ..live import live_server
from ..onnx_factory import write_linear_model

ADMIN = "replica-admin-token-of-32-characters-or-more"
ROW = [0.5, -1.0, 2.0, 0.25]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("replicas") / "models"
    write_linear_model(directory, name="toy", n_features=4, n_classes=3, seed=0)
    return directory


class Replicas:
    """Start servers on one database; each is stopped when the test ends."""

    def __init__(self, models_dir: Path, database_url: str, stack: ExitStack) -> None:
        self.models_dir = models_dir
        self.database_url = database_url
        self._stack = stack

    def _server(self) -> AbstractContextManager[str]:
        return live_server(
            models_dir=self.models_dir, database_url=self.database_url, admin_token=ADMIN
        )

    def start(self) -> str:
        return self._stack.enter_context(self._server())

    def start_together(self, count: int) -> list[str]:
        """Start `count` servers at once: they race to migrate an empty database."""
        servers = [self._server() for _ in range(count)]
        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(server.__enter__) for server in servers]
        urls: list[str] = []
        for server, future in zip(servers, futures, strict=True):
            if future.exception() is None:
                self._stack.push(server)
                urls.append(future.result())
        for future in futures:
            if (error := future.exception()) is not None:
                raise error
        return urls

    def stop_all(self) -> None:
        self._stack.close()


@pytest.fixture
def replicas_on(models_dir: Path) -> Iterator[Callable[[str], Replicas]]:
    with ExitStack() as stack:

        def make(database_url: str) -> Replicas:
            return Replicas(models_dir, database_url, stack.enter_context(ExitStack()))

        yield make


@pytest.fixture
def postgres_replicas(replicas_on: Callable[[str], Replicas], postgres_url: str) -> Replicas:
    return replicas_on(postgres_url)


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def _create(url: str, name: str, **params: object) -> str:
    response = httpx.post(
        f"{url}/admin/tenants", json={"name": name, **params}, headers=_admin(), timeout=10
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


def _predict(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/toy/predict",
        json={"instances": [ROW]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def _probabilities(url: str, key: str) -> list[float]:
    response = _predict(url, key)
    assert response.status_code == 200, response.text
    probabilities: list[float] = response.json()["predictions"][0]["probabilities"]
    return probabilities


@pytest.mark.postgres
def test_tenant_created_through_one_replica_is_served_by_the_other(
    postgres_replicas: Replicas,
) -> None:
    first, second = postgres_replicas.start_together(2)
    key = _create(first, "acme", noise_mode="keyed")

    listed = httpx.get(f"{second}/admin/tenants", headers=_admin(), timeout=10).json()
    assert [t["name"] for t in listed] == ["acme"]
    # Keyed noise is seeded by the tenant's secret in the database: both replicas
    # give the identical answer, as one server does for a repeated query.
    assert _probabilities(second, key) == _probabilities(first, key)
    assert _predict(second, "dn_not-a-key").status_code == 401


@pytest.mark.postgres
def test_update_through_one_replica_changes_the_others_answers(
    postgres_replicas: Replicas,
) -> None:
    first = postgres_replicas.start()
    second = postgres_replicas.start()
    key = _create(first, "acme", noise_mode="keyed", temperature=10.0)
    before = _probabilities(second, key)

    patched = httpx.patch(
        f"{first}/admin/tenants/acme", json={"temperature": 0.5}, headers=_admin(), timeout=10
    )
    assert patched.status_code == 200, patched.text

    after = _probabilities(second, key)
    assert after != before
    # T = 10 flattens the answer; T = 0.5 sharpens it. Same keyed noise, so the
    # top probability can only grow.
    assert max(after) > max(before)
    assert after == _probabilities(first, key)
    seen = httpx.get(f"{second}/admin/tenants/acme", headers=_admin(), timeout=10).json()
    assert seen["temperature"] == 0.5 and seen["version"] == 2


@pytest.mark.postgres
def test_key_rotation_and_removal_reach_every_replica(postgres_replicas: Replicas) -> None:
    first = postgres_replicas.start()
    second = postgres_replicas.start()
    old_key = _create(first, "acme")
    assert _predict(second, old_key).status_code == 200

    rotated = httpx.post(f"{first}/admin/tenants/acme/rotate-key", headers=_admin(), timeout=10)
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["api_key"]
    assert _predict(second, old_key).status_code == 401
    assert _predict(second, new_key).status_code == 200

    removed = httpx.delete(f"{second}/admin/tenants/acme", headers=_admin(), timeout=10)
    assert removed.status_code == 204
    assert _predict(first, new_key).status_code == 401


@pytest.mark.postgres
def test_replica_started_later_sees_existing_tenants(postgres_replicas: Replicas) -> None:
    first = postgres_replicas.start()
    keys = {name: _create(first, name, noise_mode="keyed") for name in ("acme", "globex")}
    answers = {name: _probabilities(first, key) for name, key in keys.items()}

    late = postgres_replicas.start()
    listed = httpx.get(f"{late}/admin/tenants", headers=_admin(), timeout=10).json()
    assert sorted(t["name"] for t in listed) == ["acme", "globex"]
    for name, key in keys.items():
        assert _probabilities(late, key) == answers[name]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_restart_keeps_tenants_keys_and_keyed_answers(
    kind: str,
    replicas_on: Callable[[str], Replicas],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if kind == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'tenants.db'}"
    else:
        database_url = request.getfixturevalue("postgres_url")
    before = replicas_on(database_url)
    url = before.start()
    key = _create(url, "acme", noise_mode="keyed", base_variance=1.0)
    answer = _probabilities(url, key)
    before.stop_all()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/v2/health/live", timeout=2)

    after = replicas_on(database_url)
    restarted = after.start()
    assert _probabilities(restarted, key) == answer
    tenant = httpx.get(f"{restarted}/admin/tenants/acme", headers=_admin(), timeout=10).json()
    assert tenant["base_variance"] == 1.0 and tenant["noise_mode"] == "keyed"
