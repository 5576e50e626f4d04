"""A tenant store that cannot be opened stops `dynanoise serve` with one line and exit
status 2, like a broken model does: no traceback, and no password from the URL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from service import cli
from service.commands import serve as serve_command

from ..onnx_factory import write_linear_model
from .conftest import POSTGRES_URL_ENV
from .server import server_env

PASSWORD = "s3cret-do-not-print"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _corrupt_file(root: Path) -> str:
    path = root / "corrupt.db"
    path.write_bytes(b"this is not an SQLite database, whatever its name says\n" * 40)
    return f"sqlite:///{path}"


def _path_under_a_file(root: Path) -> str:
    (root / "a-file").write_text("not a directory\n")
    return f"sqlite:///{root / 'a-file' / 'tenants.db'}"


def _wrong_password(root: Path) -> str:
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set (run scripts/start_postgres.sh)")
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


BAD_STORES: dict[str, Callable[[Path], str]] = {
    "PostgreSQL unreachable": lambda root: (
        f"postgresql+psycopg://dynanoise:{PASSWORD}@127.0.0.1:{_closed_port()}/dynanoise"
    ),
    "PostgreSQL wrong password": _wrong_password,
    "SQLite path under a file": _path_under_a_file,
    "SQLite file corrupt": _corrupt_file,
    "unknown URL scheme": lambda root: f"nosuchdb://dynanoise:{PASSWORD}@host/db",
    "unparsable URL": lambda root: f"not a url {PASSWORD}",
}


@pytest.mark.parametrize("store", list(BAD_STORES))
def test_a_store_that_cannot_be_opened_stops_serve_with_one_line(
    store: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    models = tmp_path / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    database_url = BAD_STORES[store](tmp_path)
    for name, value in server_env(models, database_url, 1, "", 1).items():
        if name.startswith("DYNANOISE_"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    def must_not_serve(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server started on a broken store")

    monkeypatch.setattr(serve_command.uvicorn, "run", must_not_serve)
    code = cli.main(["serve"])
    output = "".join(capfd.readouterr())
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("dynanoise: cannot start: tenant store "), lines[0]
    assert PASSWORD not in output


def test_the_real_process_exits_2_with_one_line_on_a_corrupt_store(tmp_path: Path) -> None:
    # End to end: logging set-up, imports and the exit status of the process itself.
    models = tmp_path / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    env = server_env(models, _corrupt_file(tmp_path), 1, "", 1)
    env["DYNANOISE_LOG_LEVEL"] = "warning"
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dynanoise: cannot start: tenant store sqlite:///")
    assert "file is not a database" in lines[0]
