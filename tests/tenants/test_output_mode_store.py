"""Output modes and the repeated-query cap in the tenant store (SQLite and PostgreSQL),
migration 0004, and the CLI options that set them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, text

from service.cli import main
from service.defense.params import DefenseParams, InvalidParameters, NoiseMode, OutputMode
from service.tenants import CorruptTenant, TenantStore
from service.tenants.migrations import build_alembic_config

MakeStore = Callable[..., TenantStore]

COARSE = DefenseParams(
    output_mode=OutputMode.COARSE, confidence_buckets=6, noise_mode=NoiseMode.KEYED
)
NEW_COLUMNS = {"output_mode", "confidence_buckets", "repeated_queries_per_minute"}


def _columns(store: TenantStore) -> set[str]:
    return {column["name"] for column in inspect(store.engine).get_columns("tenants")}


@pytest.mark.parametrize(
    "params",
    [
        DefenseParams(output_mode=OutputMode.CALIBRATED_LABEL),
        COARSE,
        DefenseParams(output_mode=OutputMode.COARSE, confidence_buckets=1),
    ],
    ids=["calibrated_label", "coarse", "coarse-one-bucket"],
)
def test_output_mode_and_repeat_cap_survive_a_store_reopen(
    make_store: MakeStore, params: DefenseParams
) -> None:
    created, key = make_store().create("acme", params, repeated_queries_per_minute=20)
    reopened = make_store()
    loaded = reopened.get("acme")
    assert loaded == created
    assert loaded.params == params
    assert loaded.repeated_queries_per_minute == 20.0
    assert reopened.authenticate(key) == created
    shown = loaded.to_public().as_dict()
    assert shown["output_mode"] == params.output_mode.value
    assert shown["confidence_buckets"] == params.confidence_buckets
    assert shown["repeated_queries_per_minute"] == 20.0


def test_defaults_are_dynanoise_four_buckets_and_no_repeat_cap(store: TenantStore) -> None:
    created, _ = store.create("acme")
    assert created.params.output_mode is OutputMode.DYNANOISE
    assert created.params.confidence_buckets == 4
    assert created.repeated_queries_per_minute is None


def test_update_changes_output_mode_and_buckets_and_bumps_version(store: TenantStore) -> None:
    created, _ = store.create("acme")
    coarse = store.update("acme", output_mode="coarse", confidence_buckets=8)
    assert coarse.params.output_mode is OutputMode.COARSE and coarse.params.confidence_buckets == 8
    assert coarse.version == created.version + 1
    assert store.update("acme", output_mode=OutputMode.COARSE) == coarse  # no change
    assert store.get("acme").params == coarse.params


def test_update_sets_and_clears_the_repeat_cap(store: TenantStore) -> None:
    created, _ = store.create("acme")
    capped = store.update("acme", repeated_queries_per_minute=6)
    assert capped.repeated_queries_per_minute == 6.0 and capped.version == created.version + 1
    assert store.update("acme", repeated_queries_per_minute=6.0) == capped
    cleared = store.update("acme", repeated_queries_per_minute=None)
    assert cleared.repeated_queries_per_minute is None and cleared.version == capped.version + 1


@pytest.mark.parametrize(
    "changes",
    [
        {"output_mode": "exact"},
        {"confidence_buckets": 0},
        {"confidence_buckets": 9},
        {"confidence_buckets": 2.5},
        {"repeated_queries_per_minute": 0},
        {"repeated_queries_per_minute": -1.0},
        {"repeated_queries_per_minute": float("inf")},
        {"repeated_queries_per_minute": "10"},
    ],
)
def test_invalid_values_are_refused_and_leave_the_tenant_unchanged(
    store: TenantStore, changes: dict[str, Any]
) -> None:
    created, _ = store.create("acme", COARSE)
    with pytest.raises(InvalidParameters):
        store.update("acme", **changes)
    assert store.get("acme") == created


@pytest.mark.parametrize("rate", [0, -2.0])
def test_create_refuses_a_repeat_cap_that_is_not_positive(store: TenantStore, rate: float) -> None:
    with pytest.raises(InvalidParameters, match="repeated_queries_per_minute"):
        store.create("acme", repeated_queries_per_minute=rate)
    assert store.is_empty()


def test_lossy_modes_without_noise_are_not_clean_outputs(store: TenantStore) -> None:
    lossy = DefenseParams(base_variance=0.0, output_mode=OutputMode.CALIBRATED_LABEL)
    created, _ = store.create("acme", lossy, allow_clean_outputs=False)
    assert created.params == lossy
    with pytest.raises(InvalidParameters, match="DYNANOISE_ALLOW_CLEAN_OUTPUTS"):
        store.update("acme", allow_clean_outputs=False, output_mode="dynanoise")


@pytest.mark.parametrize(
    ("column", "value"),
    [("output_mode", "'exact'"), ("confidence_buckets", "0"), ("confidence_buckets", "9")],
)
def test_a_stored_bad_output_setting_is_a_corrupt_tenant(
    store: TenantStore, column: str, value: str
) -> None:
    _, key = store.create("acme")
    with store.engine.begin() as connection:
        connection.execute(text(f"UPDATE tenants SET {column} = {value} WHERE name = 'acme'"))
    with pytest.raises(CorruptTenant):
        store.get("acme")
    with pytest.raises(CorruptTenant):
        store.authenticate(key)


def test_upgrade_from_0003_keeps_tenants_as_dynanoise_with_four_buckets(
    store: TenantStore,
) -> None:
    _, key = store.create("acme", COARSE, rows_per_second=9, repeated_queries_per_minute=3)
    with store.engine.begin() as connection:
        command.downgrade(build_alembic_config(connection), "0003")
    assert not NEW_COLUMNS & _columns(store)
    store.migrate()
    assert _columns(store) >= NEW_COLUMNS
    upgraded = store.get("acme")
    assert upgraded.params.output_mode is OutputMode.DYNANOISE
    assert upgraded.params.confidence_buckets == 4
    assert upgraded.repeated_queries_per_minute is None
    assert upgraded.params.noise_mode is NoiseMode.KEYED and upgraded.rows_per_second == 9.0
    assert store.authenticate(key) == upgraded
    # A tenant created after the upgrade keeps its own settings.
    later, _ = store.create("later", COARSE, repeated_queries_per_minute=3)
    assert store.get("later") == later


# --- CLI ---------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cli(tmp_path: Path) -> tuple[str, ...]:
    return ("tenants", "--database-url", f"sqlite:///{tmp_path / 'cli.db'}")


@pytest.mark.parametrize(
    ("options", "mode", "buckets"),
    [
        (("--output-mode", "calibrated_label"), OutputMode.CALIBRATED_LABEL, 4),
        (("--output-mode", "coarse", "--confidence-buckets", "3"), OutputMode.COARSE, 3),
    ],
)
def test_cli_adds_tenants_in_each_lossy_mode(
    cli: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    options: tuple[str, ...],
    mode: OutputMode,
    buckets: int,
) -> None:
    argv = (*cli, "add", "acme", *options, "--repeated-queries-per-minute", "30")
    assert _run(capsys, *argv)[0] == 0
    with TenantStore(cli[2]) as store:
        tenant = store.get("acme")
    assert tenant.params.output_mode is mode and tenant.params.confidence_buckets == buckets
    assert tenant.repeated_queries_per_minute == 30.0
    code, out, _ = _run(capsys, *cli, "list", "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert (listed["output_mode"], listed["confidence_buckets"]) == (mode.value, buckets)
    assert listed["repeated_queries_per_minute"] == 30.0
    code, out, _ = _run(capsys, *cli, "list")
    assert code == 0
    header = out.splitlines()[0].split()
    assert {"output_mode", "confidence_buckets", "repeated_queries_per_minute"} <= set(header)
    assert mode.value in out.splitlines()[1]


def test_cli_updates_output_mode_buckets_and_repeat_cap(
    cli: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, *cli, "add", "acme")[0] == 0
    code, out, _ = _run(
        capsys,
        *cli,
        "update",
        "acme",
        "--output-mode",
        "coarse",
        "--confidence-buckets",
        "8",
        "--repeated-queries-per-minute",
        "5",
    )
    assert code == 0
    shown = json.loads(out)
    assert (shown["output_mode"], shown["confidence_buckets"]) == ("coarse", 8)
    assert shown["repeated_queries_per_minute"] == 5.0


@pytest.mark.parametrize(
    "options",
    [
        ("--confidence-buckets", "0"),
        ("--confidence-buckets", "9"),
        ("--repeated-queries-per-minute", "0"),
        ("--repeated-queries-per-minute", "-1"),
    ],
)
def test_cli_refuses_invalid_values(
    cli: tuple[str, ...], capsys: pytest.CaptureFixture[str], options: tuple[str, ...]
) -> None:
    code, _, err = _run(capsys, *cli, "add", "acme", *options)
    assert code == 1 and err.startswith("dynanoise tenants:")
    assert _run(capsys, *cli, "add", "ok")[0] == 0
    code, _, err = _run(capsys, *cli, "update", "ok", *options)
    assert code == 1 and err.startswith("dynanoise tenants:")


@pytest.mark.parametrize("options", [("--output-mode", "exact"), ("--confidence-buckets", "2.5")])
def test_cli_rejects_unparseable_values_at_the_argument_parser(
    cli: tuple[str, ...], capsys: pytest.CaptureFixture[str], options: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*cli, "add", "acme", *options])
    assert exited.value.code == 2
    assert "--" in capsys.readouterr().err
