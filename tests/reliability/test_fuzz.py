"""Schemathesis against the service's own OpenAPI schema: every operation, with valid
and bad credentials, schema-valid (positive) and schema-invalid (negative) data.

No response may be a 5xx, break the documented schema (status code, content type,
body), lack the security headers, show internals in an error, or carry a tenant's
noise secret. Examples per operation: DYNANOISE_FUZZ_EXAMPLES (small in the suite;
`make fuzz` runs many more).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.middleware import SECURITY_HEADERS
from service.app import create_app
from service.settings import Settings

from ..conftest import ADMIN_TOKEN
from .leaks import internals_in, leaked

EXAMPLES = int(os.environ.get("DYNANOISE_FUZZ_EXAMPLES", "12"))
REPORT = os.environ.get("DYNANOISE_FUZZ_REPORT")  # JSON summary of requests by status
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
HEADER_NAMES = [name.decode() for name, _ in SECURITY_HEADERS]
FINITE_FLOAT32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@dataclass
class Target:
    app: FastAPI
    client: TestClient
    schema: Any
    credentials: dict[str, dict[str, str]]  # variant name -> headers, per route family
    admin_credentials: dict[str, dict[str, str]]
    noise_secrets: list[bytes]
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Target]:
    from ..onnx_factory import write_linear_model

    base = tmp_path_factory.mktemp("fuzz")
    models = base / "models"
    write_linear_model(models, name="toy", n_features=4, n_classes=3, seed=0)
    write_linear_model(models, name="wide", n_features=6, n_classes=5, seed=1)
    app_settings = Settings(
        database_url=f"sqlite:///{Path(base) / 'tenants.db'}",
        models_dir=models,
        admin_token=SecretStr(ADMIN_TOKEN),
        max_batch=16,
        max_body_bytes=64 * 1024,
        tenant_cache_seconds=1.0,
    )
    app = create_app(app_settings)
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

        def add(name: str, **params: object) -> str:
            response = client.post("/admin/tenants", json={"name": name, **params}, headers=admin)
            assert response.status_code == 201, response.text
            key: str = response.json()["api_key"]
            return key

        # Names fuzzed path parameters will not hit, so the keys stay valid throughout.
        key = add("fuzz-main-tenant-0001", noise_mode="keyed", allowed_models=["toy"])
        fresh_key = add("fuzz-fresh-tenant-0002", rate_limit_per_second=1e6)
        revoked = add("fuzz-rotated-tenant-0003")
        client.post("/admin/tenants/fuzz-rotated-tenant-0003/rotate-key", headers=admin)
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        store = app.state.services.store
        secrets = [t.noise_secret for t in store.list()]
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        yield Target(
            app=app,
            client=client,
            schema=schema,
            credentials={
                "valid": {"Authorization": f"Bearer {key}"},
                "valid (fresh noise, rate-limited)": {"Authorization": f"Bearer {fresh_key}"},
                "missing": {},
                "not a key": {"Authorization": "Bearer not-a-key"},
                "forged secret": {"Authorization": f"Bearer {forged}"},
                "rotated away": {"Authorization": f"Bearer {revoked}"},
                "admin token": admin,
                "basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
            },
            admin_credentials={
                "admin": admin,
                "missing": {},
                "wrong token": {"Authorization": "Bearer wrong-admin-token"},
                "tenant key": {"Authorization": f"Bearer {key}"},
            },
            noise_secrets=secrets,
        )


def _valid_body(path: str) -> st.SearchStrategy[Any]:
    """Bodies the service accepts, so the fuzz reaches the 200 paths too."""
    if path.startswith("/v1/"):
        rows = st.lists(st.lists(FINITE_FLOAT32, min_size=4, max_size=4), min_size=1, max_size=4)
        return rows.map(lambda r: {"instances": r})
    tensors = st.integers(min_value=1, max_value=4).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(FINITE_FLOAT32, min_size=4 * n, max_size=4 * n))
    )
    return st.tuples(tensors, st.booleans()).map(
        lambda t: {
            "inputs": [
                {"name": "input", "shape": [t[0][0], 4], "datatype": "FP32", "data": t[0][1]}
            ],
            **({"outputs": [{"name": "probabilities"}]} if t[1] else {}),
        }
    )


def _write_report(path: Path, mode: Any, statuses: dict[str, dict[int, int]]) -> None:
    report = json.loads(path.read_text()) if path.exists() else {}
    report["examples_per_operation"] = EXAMPLES
    report[mode.value] = {
        "requests": sum(sum(c.values()) for c in statuses.values()),
        "by_operation": {op: dict(sorted(c.items())) for op, c in sorted(statuses.items())},
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def _sent_text(case: Any) -> str:
    """Everything the client sent, so that an error echoing it is not taken for a leak."""
    parts = [case.path_parameters, case.query, case.headers, case.body]
    return json.dumps(parts, default=str, ensure_ascii=False).lower()


def _check_response(target: Target, response: Any, label: str, sent: str) -> None:
    body: bytes = response.content
    for name in HEADER_NAMES:
        assert name in response.headers, f"{label}: no {name} header"
    assert not leaked(body, target.noise_secrets), f"{label}: a noise secret in the response"
    assert ADMIN_TOKEN.encode() not in body, f"{label}: the admin token in the response"
    if response.status_code >= 400:
        found = [f for f in internals_in(body.decode(errors="replace")) if f.lower() not in sent]
        assert not found, f"{label}: internals in an error body: {found}: {body[:300]!r}"


def _fuzz_operation(target: Target, operation: Any, mode: schemathesis.GenerationMode) -> None:
    path: str = operation.path
    is_admin = path.startswith("/admin")
    is_infer = path.endswith(("/predict", "/infer"))
    credentials = target.admin_credentials if is_admin else target.credentials
    checks = CHECKS + (
        [negative_data_rejection] if mode is schemathesis.GenerationMode.NEGATIVE else []
    )
    valid_body = _valid_body(path) if is_infer else st.none()

    @given(
        case=operation.as_strategy(generation_mode=mode),
        # Happy choices first: Hypothesis starts from the simplest example, so every
        # run reaches the 200 paths, then wanders off.
        auth=st.sampled_from(list(credentials)),
        model=st.sampled_from(["toy", None, "wide"]),
        version=st.sampled_from(["1", None]),
        replacement=st.one_of(valid_body, st.none())
        if is_infer and mode is schemathesis.GenerationMode.POSITIVE
        else st.none(),
    )
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any, auth: str, model: str | None, version: str | None, replacement: Any) -> None:
        parameters = case.path_parameters or {}
        if model is not None and "model" in parameters:
            parameters["model"] = model
        if version is not None and "version" in parameters:
            parameters["version"] = version
        if replacement is not None:
            case.body = replacement
        headers = credentials[auth]
        response = case.call(headers=headers)
        label = f"{operation.method.upper()} {path} [{auth}] -> {response.status_code}"
        counts = target.statuses.setdefault(f"{operation.method.upper()} {path}", {})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        _check_response(target, response, label, _sent_text(case))
        case.validate_response(response, checks=checks, headers=headers)

    run()


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_every_operation_survives_fuzzing(
    target: Target, mode: schemathesis.GenerationMode
) -> None:
    failures: list[str] = []
    target.statuses.clear()
    operations = [result.ok() for result in target.schema.get_all_operations()]
    assert len(operations) >= 15  # v1, v2, admin, health: nothing silently skipped
    for operation in operations:
        try:
            _fuzz_operation(target, operation, mode)
        except Unsatisfiable:
            continue  # no schema-invalid request exists (e.g. GET without parameters)
        except Exception as exc:  # collect every operation's failure, then report all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    if REPORT:
        _write_report(Path(REPORT), mode, target.statuses)
    assert not failures, "\n\n".join(failures)
    if mode is schemathesis.GenerationMode.POSITIVE:
        # The fuzz reached the answers that matter, not only the refusals.
        seen = target.statuses
        assert 200 in seen["POST /v1/models/{model}/predict"]
        assert 200 in seen["POST /v2/models/{model}/infer"]
        assert 201 in seen["POST /admin/tenants"]
