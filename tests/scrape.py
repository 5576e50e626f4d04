"""Reading the service's metrics in tests. The public port has no /metrics: the
metrics listener (`service.metrics_server`) serves them; these helpers ask its app,
in process, for the metrics of the app behind a TestClient."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from service.api.metrics_listener import metrics_app


def scrape_response(client: TestClient) -> httpx.Response:
    """The metrics listener's answer to a scrape, for the app behind ``client``."""
    metrics = client.app.state.services.metrics  # type: ignore[attr-defined]
    return TestClient(metrics_app(metrics)).get("/metrics")


def scrape(client: TestClient) -> str:
    """The text exposition the metrics listener serves for the app behind ``client``."""
    response = scrape_response(client)
    assert response.status_code == 200, response.text
    return response.text
