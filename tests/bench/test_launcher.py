"""The launcher every live server goes through (tests and benchmarks): the
environment it gives `dynanoise serve`, and a server that dies before it is ready."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bench.harness.launcher import REPO_ROOT, ServerError, service_env, start_process


def test_the_service_gets_the_callers_settings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNANOISE_ADMIN_TOKEN", "from-the-shell")
    monkeypatch.setenv("DYNANOISE_RATE_LIMIT_BURST_SECONDS", "99")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/elsewhere")
    monkeypatch.setenv("DYNANOISE_PURE_PYTHON", "1")  # not a setting: a build switch
    monkeypatch.setenv("PYTHONPATH", "/opt/extra")
    env = service_env(
        models_dir=Path("/m"),
        database_url="sqlite:///x.db",
        port=1234,
        extra={"DYNANOISE_LOG_LEVEL": "warning"},
    )
    assert "DYNANOISE_ADMIN_TOKEN" not in env
    assert "DYNANOISE_RATE_LIMIT_BURST_SECONDS" not in env
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert env["DYNANOISE_PURE_PYTHON"] == "1"
    assert env["DYNANOISE_MODELS_DIR"] == "/m" and env["DYNANOISE_PORT"] == "1234"
    assert env["DYNANOISE_HOST"] == "127.0.0.1" and env["DYNANOISE_LOG_LEVEL"] == "warning"
    assert int(env["DYNANOISE_METRICS_PORT"]) not in (0, 1234)  # never a fixed, shared one
    assert env["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/opt/extra"]


def test_a_server_that_exits_fails_the_start_at_once_with_its_output(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('cannot start: no models'); raise SystemExit(3)"]
    started = time.monotonic()
    with pytest.raises(ServerError, match="exited with 3") as error:
        start_process(command, env={}, workdir=tmp_path, port=1, timeout=30)
    assert "cannot start: no models" in str(error.value)
    assert time.monotonic() - started < 10
