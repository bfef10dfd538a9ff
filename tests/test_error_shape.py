"""Every error answer has one shape: `{"detail": "<one sentence>", "errors": [...]}`.

`errors` lists the invalid inputs (`loc`, `msg`, `type`) of a request that failed validation and is
empty otherwise; `detail` is always a string a person can act on. Each kind of error is hit through
the ASGI app: the routers' 404 and 405, the middlewares' 401, 413, 414 and 431, validation's and
the routes' 422, the 500 of a fault, and the 503s.
"""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from app_client import serve
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings

pytestmark = pytest.mark.anyio

API_KEY = "api-key-for-error-shape-tests-0123"
ADMIN_TOKEN = "admin-token-for-error-shape-tests-0123"
JSON = {"content-type": "application/json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(checkpoint_dir, max_body_bytes=1024, max_url_bytes=1024, max_header_bytes=1024) as c:
        yield c


@asynccontextmanager
async def started(checkpoint_dir: Path, **settings: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Like `app_client.serve`, with the app too (to break its engine), and app exceptions answered."""
    app = create_app(Settings(checkpoint_dir=checkpoint_dir, **settings))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield app, client


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The body of an error answer, checked to have the common shape; items checked to be complete."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"].strip(), body
    assert isinstance(body["errors"], list), body
    for item in body["errors"]:
        assert set(item) == {"loc", "msg", "type"}, item
        assert isinstance(item["loc"], list) and item["msg"] and item["type"], item
    return body


def plain(response: httpx.Response, status: int) -> str:
    """The `detail` of an error that is not about invalid inputs: its `errors` is empty."""
    body = error_of(response, status)
    assert body["errors"] == [], body
    return body["detail"]


# --- the routers ------------------------------------------------------------------------------------


async def test_unknown_path_is_404_naming_it(client: httpx.AsyncClient) -> None:
    detail = plain(await client.get("/no/such/path"), 404)
    assert "'/no/such/path'" in detail and "/docs" in detail
    long = plain(await client.get("/" + "p" * 500), 404)
    assert len(long) < 200  # the path is echoed shortened


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    detail = plain(await client.get("/sample", params={"model": "nope"}), 404)
    assert "unknown model 'nope'" in detail and "two_gmm_1D" in detail
    assert "unknown model" in plain(await client.get("/models/nope"), 404)


async def test_wrong_method_is_405_naming_the_allowed_ones(client: httpx.AsyncClient) -> None:
    response = await client.post("/sample")
    assert plain(response, 405) == "POST is not allowed on '/sample'; use GET"
    assert response.headers["allow"] == "GET"
    response = await client.delete("/logprob")
    assert plain(response, 405) == "DELETE is not allowed on '/logprob'; use GET, POST"
    assert response.headers["allow"] == "GET, POST"


# --- the middlewares: sizes and access ---------------------------------------------------------------


async def test_size_limits_answer_the_common_shape(client: httpx.AsyncClient) -> None:
    assert "CTM_MAX_URL_BYTES" in plain(await client.get("/sample", params={"model": "m" * 2000}), 414)
    big = await client.get("/sample", headers={"x-padding": "p" * 2000})
    assert "CTM_MAX_HEADER_BYTES" in plain(big, 431)
    body = json.dumps({"x": [0.5] * 1000}).encode()
    assert "CTM_MAX_BODY_BYTES" in plain(await client.post("/logprob", content=body, headers=JSON), 413)


async def test_a_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):  # no Content-Length: refused while it is read (service.limits.BodyTooLarge)
            yield b" " * 500

    response = await client.post("/logprob", content=chunks(), headers=JSON)
    assert "CTM_MAX_BODY_BYTES" in plain(response, 413)
    assert response.headers["connection"] == "close"


async def test_missing_api_key_is_401(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, api_key=API_KEY) as client:
        response = await client.get("/sample")
        assert "API key" in plain(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert (
            await client.get("/sample", params={"n": 2}, headers={"X-API-Key": API_KEY})
        ).status_code == 200


async def test_wrong_admin_token_is_401(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, admin_token=ADMIN_TOKEN) as client:
        response = await client.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
        assert "admin token" in plain(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


# --- 422: validation and the routes' own rules --------------------------------------------------------


async def test_invalid_parameters_are_named_in_detail_and_listed(client: httpx.AsyncClient) -> None:
    response = await client.get("/sample", params={"sampler": "multistep", "n": 0, "steps": 0})
    body = error_of(response, 422)
    by_name = {tuple(item["loc"]): item for item in body["errors"]}
    assert set(by_name) == {("query", "n"), ("query", "steps")}
    assert by_name["query", "n"]["type"] == "greater_than_equal"
    assert "n: Input should be greater than or equal to 1" in body["detail"]
    assert "steps: Input should be greater than or equal to 1" in body["detail"]


async def test_a_rule_between_parameters_is_one_sentence(client: httpx.AsyncClient) -> None:
    detail = plain(await client.get("/sample", params={"sampler": "onestep", "steps": 3}), 422)
    assert "onestep" in detail and "steps=3" in detail
    detail = plain(await client.get("/sample", params={"stpes": 3}), 422)
    assert "unknown query parameter 'stpes'" in detail


async def test_unknown_sampler_on_logprob(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/logprob", params={"x": [0.0], "sampler": "rk4"}),
        await client.post("/logprob", json={"x": [0.0], "sampler": "rk4"}),
    ):
        body = error_of(response, 422)
        assert body["errors"][0]["loc"][-1] == "sampler"
        assert body["detail"].startswith("sampler: Input should be 'onestep' or 'ode'")


@pytest.mark.parametrize(
    ("content", "kind", "name"),
    [
        (b'{"x": [1e999]}', "finite_number", "x[0]"),  # parses as inf: never echoed, never a crash
        (b"\x80\x81", "json_invalid", "body"),  # not even text
        (b'{"x": "\\ud800"}', "json_invalid", "body"),  # a lone surrogate
        (b'{"x": []}', "too_short", "x"),
        (b"[1, 2]", "model_type", "body"),
    ],
)
async def test_hostile_bodies_get_a_readable_422(
    client: httpx.AsyncClient, content: bytes, kind: str, name: str
) -> None:
    body = error_of(await client.post("/logprob", content=content, headers=JSON), 422)
    assert [item["type"] for item in body["errors"]] == [kind]
    assert body["errors"][0]["loc"][0] == "body"
    assert body["detail"].startswith(f"{name}: ")


async def test_many_invalid_values_are_summarised(client: httpx.AsyncClient) -> None:
    body = error_of(await client.post("/logprob", json={"x": ["a"] * 50}), 422)
    assert len(body["errors"]) == 50
    assert body["detail"].startswith("x[0]: Input should be a valid number")
    assert body["detail"].endswith("; and 45 more invalid values")


async def test_openapi_declares_the_common_shape(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert schemas["ErrorResponse"]["required"] == ["detail", "errors"]
    assert schemas["ErrorResponse"]["properties"]["detail"]["type"] == "string"
    assert set(schemas["ValidationErrorItem"]["properties"]) == {"loc", "msg", "type"}
    assert "HTTPValidationError" not in schemas  # FastAPI's list-shaped 422, replaced everywhere
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    assert response["content"]["application/json"]["schema"] == error, (path, method, status)


# --- 500 and 503 -------------------------------------------------------------------------------------


async def test_a_fault_is_500(checkpoint_dir: Path) -> None:
    async with started(checkpoint_dir) as (app, client):

        async def broken(job: Any) -> Any:
            raise RuntimeError("simulated fault")

        app.state.engine.sample = broken
        assert "server log" in plain(await client.get("/sample"), 500)


async def test_a_timeout_is_503(checkpoint_dir: Path) -> None:
    async with started(checkpoint_dir, request_timeout_s=0.2) as (app, client):

        async def slow(job: Any) -> Any:
            await anyio.sleep(5)

        app.state.engine.sample = slow
        response = await client.get("/sample")
        assert response.headers["retry-after"] == "1"
        assert "CTM_REQUEST_TIMEOUT_S" in plain(response, 503)


async def test_not_ready_is_503_with_the_common_keys(tmp_path: Path) -> None:
    """/readyz's 503 is the probe's answer (status, models) and an error (detail, errors)."""
    async with serve(tmp_path) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body == {"status": "not ready", "models": [], "detail": body["detail"], "errors": []}
    assert "no model is loaded" in body["detail"]
