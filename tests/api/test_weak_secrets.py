"""`dynanoise serve` refuses an admin or metrics token that is a placeholder from the
shipped examples or shorter than 32 characters, with one line and exit status 2; the
compose file and the Kubernetes example make the operator supply a real one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from service import cli
from service.commands.serve import MIN_TOKEN_CHARS, weak_token_problem

REPO = Path(__file__).resolve().parents[2]
STRONG = "9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c"  # 32 hex characters, as `openssl rand -hex 16`


def _env_example_token() -> str:
    match = re.search(r"^DYNANOISE_ADMIN_TOKEN=(\S+)", (REPO / ".env.example").read_text(), re.M)
    assert match, "DYNANOISE_ADMIN_TOKEN not in .env.example"
    return match.group(1)


def _k8s_example_tokens() -> list[str]:
    secret = yaml.safe_load((REPO / "deploy/k8s/secret.example.yaml").read_text())
    data = secret["stringData"]
    return [data["DYNANOISE_ADMIN_TOKEN"], data["DYNANOISE_METRICS_TOKEN"]]


WEAK = {
    ".env.example": _env_example_token(),
    "k8s admin example": _k8s_example_tokens()[0],
    "k8s metrics example": _k8s_example_tokens()[1],
    "change-me": "change-me",
    "changeme, padded to 32+": "changeme-changeme-changeme-changeme",
    "short": "hunter2",
    "31 characters": STRONG[:31],
    "one character repeated": "a" * 64,
}


@pytest.mark.parametrize("case", list(WEAK))
def test_placeholders_and_short_tokens_are_weak(case: str) -> None:
    assert weak_token_problem(SecretStr(WEAK[case])) is not None


@pytest.mark.parametrize("token", [STRONG, STRONG * 2, "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA"])
def test_long_random_tokens_and_unset_ones_are_accepted(token: str) -> None:
    assert len(token) >= MIN_TOKEN_CHARS
    assert weak_token_problem(SecretStr(token)) is None
    assert weak_token_problem(None) is None


@pytest.mark.parametrize("variable", ["DYNANOISE_ADMIN_TOKEN", "DYNANOISE_METRICS_TOKEN"])
@pytest.mark.parametrize("case", [".env.example", "k8s admin example", "short"])
def test_serve_refuses_a_weak_token_with_one_line_and_exit_2(
    variable: str,
    case: str,
    uvicorn_calls: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, WEAK[case])
    code = cli.main(["serve"])
    output = "".join(capfd.readouterr())
    assert code == 2
    assert not uvicorn_calls
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"dynanoise: cannot start: {variable} ")
    assert WEAK[case] not in output  # the line names the problem, not the token


def test_serve_starts_with_a_strong_token(
    uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNANOISE_ADMIN_TOKEN", STRONG)
    monkeypatch.setenv("DYNANOISE_METRICS_TOKEN", STRONG[::-1])
    assert cli.main(["serve"]) == 0
    assert uvicorn_calls


def test_compose_requires_the_admin_token_and_asks_for_32_characters() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    value = compose["x-dynanoise-env"]["DYNANOISE_ADMIN_TOKEN"]
    assert value.startswith("${DYNANOISE_ADMIN_TOKEN:?") and "32" in value


def test_the_k8s_example_says_how_to_generate_a_real_token() -> None:
    text = (REPO / "deploy/k8s/secret.example.yaml").read_text()
    assert "openssl rand -hex 32" in text
    assert "refuse" in text.lower()
