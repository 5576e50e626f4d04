"""/docs and /redoc load every file from the service itself: they render offline."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

from ..conftest import Harness

_URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_SCRIPT_URL = re.compile(r"""url:\s*['"]([^'"]+)['"]""")
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def _asset_urls(html: str) -> list[str]:
    return _URL_ATTRIBUTE.findall(html)


@pytest.mark.parametrize(("page", "assets"), [("/docs", 3), ("/redoc", 2)])
def test_the_docs_pages_load_only_local_assets(harness: Harness, page: str, assets: int) -> None:
    response = harness.client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "cdn." not in html and "fonts.googleapis" not in html
    urls = _asset_urls(html)
    assert len(urls) == assets, urls
    for url in urls:
        assert url.startswith("/docs/assets/"), url
        asset = harness.client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert asset.headers["content-type"].startswith(_CONTENT_TYPES[suffix]), url
        assert len(asset.content) > 1000, url


def test_swagger_ui_is_a_version_that_renders_openapi_3_1(harness: Harness) -> None:
    """Swagger UI 4 refuses an OpenAPI 3.1 document (FastAPI's); 5 renders it."""
    assert harness.client.get("/openapi.json").json()["openapi"].startswith("3.1")
    bundle = harness.client.get("/docs/assets/swagger-ui-bundle.js").text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle)
    assert version is not None and int(version.group(1)) >= 5


def test_the_docs_pages_follow_the_root_path(settings: Settings) -> None:
    app = create_app(settings)
    with TestClient(app, root_path="/dynanoise") as client:
        html = client.get("/docs").text
    assert all(url.startswith("/dynanoise/docs/assets/") for url in _asset_urls(html))
    assert _SCRIPT_URL.findall(html) == ["/dynanoise/openapi.json"]


def test_the_docs_are_not_in_the_openapi_document(harness: Harness) -> None:
    paths = harness.client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]
