"""The `dynanoise` CLI: its explicit command list, and tenant management end to end
against a real SQLite store."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import build_parser, main
from service.commands.serve import ensure_demo_tenant
from service.tenants import TenantStore


def test_the_commands_are_exactly_the_public_ones() -> None:
    (subparsers,) = (
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert list(subparsers.choices) == [
        "serve",
        "tenants",
        "models",
        "train",
        "audit",
        "calibrate",
        "bench",
    ]


def test_a_command_that_fails_to_import_is_an_error_not_a_missing_command() -> None:
    broken = (
        "import sys; sys.modules['service.commands.train'] = None; import service.cli; "
        "service.cli.main(['train', '--help'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", broken], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr and "service.commands.train" in result.stderr


def test_unknown_arguments_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tenants", "list", "--bogus"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tenant_lifecycle(
    db_url: str, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(
        capsys,
        "tenants",
        "--database-url",
        db_url,
        "--models-dir",
        str(models_dir),
        "add",
        "clinic",
        "--noise-mode",
        "keyed",
        "--base-variance",
        "0.5",
        "--allowed-models",
        "toy,wide",
    )
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key.startswith("dn_")

    store = TenantStore(db_url)
    tenant = store.authenticate(key)
    assert tenant is not None and tenant.name == "clinic"
    assert tenant.params.base_variance == 0.5 and tenant.params.noise_mode == "keyed"
    assert tenant.allows("toy") and not tenant.allows("other")

    code, out, _ = _run(capsys, "tenants", "--database-url", db_url, "list", "--json")
    listed = json.loads(out)
    assert [t["name"] for t in listed] == ["clinic"]
    assert key not in out

    code, out, _ = _run(
        capsys, "tenants", "--database-url", db_url, "update", "clinic", "--temperature", "4"
    )
    assert code == 0 and json.loads(out)["temperature"] == 4.0

    code, out, _ = _run(capsys, "tenants", "--database-url", db_url, "rotate-key", "clinic")
    new_key = out.strip().splitlines()[-1]
    assert code == 0 and new_key != key
    fresh = TenantStore(db_url, cache_ttl_seconds=0)
    assert fresh.authenticate(key) is None and fresh.authenticate(new_key) is not None

    code, _, _ = _run(capsys, "tenants", "--database-url", db_url, "remove", "clinic")
    assert code == 0
    assert TenantStore(db_url).list() == []


@pytest.mark.parametrize(
    "argv",
    [
        ("add", "bad name"),
        ("add", "x", "--temperature", "0"),
        ("add", "x", "--ensemble-size", "100"),
        ("update", "ghost", "--temperature", "2"),
        ("rotate-key", "ghost"),
        ("remove", "ghost"),
        ("update", "ghost"),
    ],
)
def test_tenant_errors_exit_nonzero_with_a_message(
    db_url: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, _, err = _run(capsys, "tenants", "--database-url", db_url, *argv)
    assert code == 1 and err.startswith("dynanoise tenants:")


def test_duplicate_tenant_is_refused(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "tenants", "--database-url", db_url, "add", "a")[0] == 0
    assert _run(capsys, "tenants", "--database-url", db_url, "add", "a")[0] == 1


def test_rows_per_second_is_set_updated_and_listed(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tenants = ("tenants", "--database-url", db_url)
    assert _run(capsys, *tenants, "add", "acme", "--rows-per-second", "50")[0] == 0
    assert TenantStore(db_url).get("acme").rows_per_second == 50.0
    code, out, _ = _run(capsys, *tenants, "update", "acme", "--rows-per-second", "8")
    assert code == 0 and json.loads(out)["rows_per_second"] == 8.0
    code, out, _ = _run(capsys, *tenants, "list")
    assert code == 0 and "rows_per_second" in out.splitlines()[0]
    assert _run(capsys, *tenants, "update", "acme", "--rows-per-second", "0")[0] == 1


def test_clean_outputs_are_refused_unless_the_setting_allows_them(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenants = ("tenants", "--database-url", db_url)
    monkeypatch.delenv("DYNANOISE_ALLOW_CLEAN_OUTPUTS", raising=False)
    code, _, err = _run(capsys, *tenants, "add", "clean", "--base-variance", "0")
    assert code == 1 and "DYNANOISE_ALLOW_CLEAN_OUTPUTS" in err
    assert _run(capsys, *tenants, "add", "noisy")[0] == 0
    code, _, err = _run(capsys, *tenants, "update", "noisy", "--base-variance", "0")
    assert code == 1 and "DYNANOISE_ALLOW_CLEAN_OUTPUTS" in err
    assert TenantStore(db_url).get("noisy").params.base_variance == 0.3
    monkeypatch.setenv("DYNANOISE_ALLOW_CLEAN_OUTPUTS", "true")
    assert _run(capsys, *tenants, "add", "clean", "--base-variance", "0")[0] == 0
    assert _run(capsys, *tenants, "update", "noisy", "--base-variance", "0")[0] == 0


def test_demo_tenant_is_created_once(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = TenantStore(db_url)
    store.migrate()
    key_file = tmp_path / "demo_api_key"
    key = ensure_demo_tenant(store, key_file)
    assert key is not None and key in capsys.readouterr().out
    assert key_file.read_text().strip() == key
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert ensure_demo_tenant(store, key_file) is None
    assert [t.name for t in store.list()] == ["demo"]


def test_serve_refuses_a_broken_models_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve exports its options for worker processes; let monkeypatch restore them.
    monkeypatch.setenv("DYNANOISE_MODELS_DIR", "unset")
    monkeypatch.setenv("DYNANOISE_DATABASE_URL", "unset")
    (tmp_path / "models" / "bad").mkdir(parents=True)
    (tmp_path / "models" / "bad" / "manifest.json").write_text("{not json")
    code, _, err = _run(
        capsys,
        "serve",
        "--models-dir",
        str(tmp_path / "models"),
        "--database-url",
        f"sqlite:///{tmp_path / 'db'}",
    )
    assert code == 2
    assert "cannot start" in err and "bad" in err


@pytest.mark.parametrize("action", ["add", "update"])
def test_allowed_models_must_be_models_of_the_models_dir(
    db_url: str, models_dir: Path, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: `tenants update demo --allowed-models nosuchmodel` succeeded; the admin
    API refuses the same."""
    tenants = ("tenants", "--database-url", db_url, "--models-dir", str(models_dir))
    assert _run(capsys, *tenants, "add", "acme")[0] == 0
    name = "acme" if action == "update" else "other"
    code, _, err = _run(capsys, *tenants, action, name, "--allowed-models", "toy,nosuchmodel")
    assert code == 1 and "unknown models in allowed_models: ['nosuchmodel']" in err
    assert [t.name for t in TenantStore(db_url).list()] == ["acme"]
    assert TenantStore(db_url).get("acme").allowed_models is None
    assert _run(capsys, *tenants, action, name, "--allowed-models", "toy")[0] == 0


def test_the_demo_key_file_is_beside_its_sqlite_store(tmp_path: Path) -> None:
    from service.commands.serve import demo_key_path
    from service.settings import Settings

    first = Settings(database_url=f"sqlite:///{tmp_path / 'a' / 'db.sqlite'}")
    second = Settings(database_url=f"sqlite:///{tmp_path / 'b' / 'db.sqlite'}")
    assert demo_key_path(first) == tmp_path / "a" / "demo_api_key"
    assert demo_key_path(second) == tmp_path / "b" / "demo_api_key"
    assert demo_key_path(Settings(database_url="sqlite:///./data/dynanoise.db")) == Path(
        "data/demo_api_key"
    )
    assert demo_key_path(Settings(database_url="postgresql+psycopg://u:p@db/x")) is None
    assert demo_key_path(Settings(database_url="sqlite://")) is None
    chosen = tmp_path / "keys" / "demo"
    assert demo_key_path(Settings(demo_key_file=chosen)) == chosen


def test_rotating_the_demo_key_refreshes_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'store' / 'db.sqlite'}"
    (tmp_path / "store").mkdir()
    store = TenantStore(db_url)
    store.migrate()
    key_file = tmp_path / "store" / "demo_api_key"
    first = ensure_demo_tenant(store, key_file)
    store.close()
    code, out, _ = _run(capsys, "tenants", "--database-url", db_url, "rotate-key", "demo")
    rotated = out.strip().splitlines()[-2]
    assert code == 0 and rotated != first and rotated.startswith("dn_")
    assert key_file.read_text().strip() == rotated
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert _run(capsys, "tenants", "--database-url", db_url, "remove", "demo")[0] == 0
    assert not key_file.exists()
