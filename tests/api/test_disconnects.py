"""Clients that declare a body and go away before sending it: a real server logs no
error for them (a disconnect is the client's doing, logged at debug level), and an
unauthenticated one is answered before its body is read."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from ..onnx_factory import write_linear_model
from ..reliability.server import ADMIN_TOKEN, running_server, send_request_head

PATHS = ("/v2/models/toy/infer", "/v1/models/toy/predict")
ABANDONED_PER_CASE = 20


def _abandon(port: int, path: str, headers: dict[str, str]) -> None:
    """POST declaring Content-Length 100, send 10 bytes of it, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 100"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + b'{"inputs":')


def test_abandoned_bodies_log_no_errors_and_keys_are_checked_first(tmp_path: Path) -> None:
    write_linear_model(tmp_path / "models", name="toy", n_features=4, n_classes=3, seed=0)
    with running_server(
        tmp_path,
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        # No throttle on failed authentication: every abandoned request reaches the route.
        extra_env={"DYNANOISE_CREATE_DEMO_TENANT": "false", "DYNANOISE_AUTH_FAILURE_BURST": "0"},
    ) as server:
        created = httpx.post(
            f"{server.url}/admin/tenants",
            json={"name": "t"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert created.status_code == 201, created.text
        key = created.json()["api_key"]
        cases = [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Bearer {key}"}]
        for headers in cases:
            for path in PATHS:
                for _ in range(ABANDONED_PER_CASE):
                    _abandon(server.port, path, headers)

        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        time.sleep(0.5)  # the last disconnects are handled after the server answered
        log = server.output()
        assert "ERROR" not in log and "Traceback" not in log, log[-3000:]

        # Without a key the answer comes before the body is read: a client waiting
        # for `100 Continue` gets the 401 instead.
        for path in PATHS:
            try:
                send_request_head(server.port, path, {}, body_length=100)
            except AssertionError as refused:
                assert "401" in str(refused)
            else:
                raise AssertionError("the body of an unauthenticated request was read")
