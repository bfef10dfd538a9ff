"""/docs and /redoc work without internet: every script, style sheet and icon they load is served here."""

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from app_client import serve

pytestmark = pytest.mark.anyio

# Every URL an HTML page loads: src= and href= attributes, ReDoc's spec-url, Swagger UI's `url:`.
_LOADED = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(checkpoint_dir) as c:
        yield c


def loaded_urls(html: str) -> list[str]:
    return [a or b for a, b in _LOADED.findall(html)]


@pytest.mark.parametrize(
    ("page", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
async def test_docs_pages_load_only_local_files(client: httpx.AsyncClient, page: str, script: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    # And the browser may load nothing from elsewhere (ReDoc's footer would fetch its logo from a CDN).
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "http" not in policy
    assert "//" not in re.sub(r"<!--.*?-->", "", response.text, flags=re.S).replace("://testserver", "")
    urls = loaded_urls(response.text)
    assert any(url.endswith(script) for url in urls), urls
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(_TYPES[Path(url).suffix]), url
        assert len(asset.content) > 1000, url


async def test_swagger_ui_asks_no_online_validator(client: httpx.AsyncClient) -> None:
    html = (await client.get("/docs")).text
    assert '"validatorUrl": null' in html  # else Swagger UI shows a badge from validator.swagger.io


async def test_the_assets_are_swagger_ui_5(client: httpx.AsyncClient) -> None:
    """Swagger UI 5 renders OpenAPI 3.1, the version FastAPI writes (4.x refuses it)."""
    openapi = (await client.get("/openapi.json")).json()["openapi"]
    script = (await client.get("/docs-assets/swagger-ui-bundle.js")).text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', script)
    assert version is not None and int(version.group(1)) >= 5 and openapi.startswith("3.1")


async def test_only_the_shipped_files_are_reachable(client: httpx.AsyncClient) -> None:
    for url in (
        "/docs-assets/../core.py",
        "/docs-assets/%2e%2e/core.py",
        "/docs-assets/",
        "/docs-assets/x.js",
    ):
        response = await client.get(url)
        assert response.status_code == 404, url
        assert set(response.json()) == {"detail", "errors"}


async def test_the_explorer_page_is_still_at_the_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200 and "explorer.js" in response.text
    assert (await client.get("/static/explorer.js")).status_code == 200
