"""/sample and /trajectory in binary (`Accept`): the same float32 values as JSON, the other fields in
headers, a 406 for an Accept that takes none of the encodings; and the client reading either."""

import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import HTTPException

from service.api.encoding import negotiate
from service.client import CTMClient
from tests.app_client import serve

RAW = "application/octet-stream"
NPY = "application/x-npy"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(checkpoint_dir, cors_origins=["http://page.example"]) as client:
        yield client


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("application/octet-stream", RAW),
        ("application/x-npy", NPY),
        ("APPLICATION/X-NPY; q=1", NPY),
        # The highest q wins, whatever the order; among equals, the first given.
        ("application/json;q=0.5, application/octet-stream", RAW),
        ("application/octet-stream;q=0.2, application/json;q=0.9", "application/json"),
        ("application/x-npy, application/octet-stream", NPY),
        ("text/html, application/xhtml+xml, */*;q=0.8", "application/json"),
        # q = 0 means "not this one".
        ("application/octet-stream;q=0, application/json", "application/json"),
        ("text/csv, application/x-npy;q=0.1", NPY),
    ],
)
def test_negotiation_picks_the_preferred_encoding(accept: str | None, chosen: str) -> None:
    assert negotiate(accept) == chosen


@pytest.mark.parametrize("accept", ["text/csv", "application/json;q=0", "image/png, text/html"])
def test_an_accept_that_takes_no_encoding_is_refused(accept: str) -> None:
    with pytest.raises(HTTPException) as refused:
        negotiate(accept)
    assert refused.value.status_code == 406
    assert "application/octet-stream" in refused.value.detail and repr(accept) in refused.value.detail


@pytest.mark.anyio
@pytest.mark.parametrize("query", ["n=300&seed=7", "n=64&sampler=gamma&steps=3&gamma=0.5&seed=2"])
async def test_raw_and_npy_samples_equal_the_json_ones(client: httpx.AsyncClient, query: str) -> None:
    body = (await client.get(f"/sample?{query}")).json()
    expected = np.array(body["samples"], dtype=np.float32)
    raw = await client.get(f"/sample?{query}", headers={"Accept": RAW})
    assert raw.status_code == 200 and raw.headers["content-type"] == RAW
    assert len(raw.content) == 4 * body["n"]  # float32, nothing else
    np.testing.assert_array_equal(np.frombuffer(raw.content, dtype="<f4"), expected)
    npy = await client.get(f"/sample?{query}", headers={"Accept": NPY})
    assert npy.headers["content-type"] == NPY
    array = np.load(io.BytesIO(npy.content), allow_pickle=False)
    assert array.dtype == np.dtype("<f4") and array.shape == (body["n"],)
    np.testing.assert_array_equal(array, expected)
    for field in ("model", "model_sha256", "sampler", "steps", "nfe", "n", "seed", "noise"):
        header = {"model_sha256": "ctm-model-sha256"}.get(field, f"ctm-{field}")
        assert raw.headers[header] == str(body[field]), field
    assert raw.headers["ctm-shape"] == str(body["n"])


@pytest.mark.anyio
async def test_a_binary_trajectory_is_the_paths_with_levels_in_a_header(
    client: httpx.AsyncClient,
) -> None:
    query = "/trajectory?n=20&sigmas=10,2.5,0.3,0.002&seed=4"
    body = (await client.get(query)).json()
    raw = await client.get(query, headers={"Accept": RAW})
    assert raw.headers["ctm-shape"] == "20,4"
    paths = np.frombuffer(raw.content, dtype="<f4").reshape(20, 4)
    np.testing.assert_array_equal(paths, np.array(body["paths"], dtype=np.float32))
    levels = [float(v) for v in raw.headers["ctm-sigmas"].split(",")]
    assert levels == body["sigmas"] == [10.0, 2.5, 0.3, 0.002]
    npy = await client.get(query, headers={"Accept": NPY})
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), paths)


@pytest.mark.anyio
async def test_refusals_answer_json_whatever_the_accept(client: httpx.AsyncClient) -> None:
    bad = await client.get("/sample?n=0", headers={"Accept": RAW})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/json"
    assert bad.json()["detail"].startswith("n: ")
    refused = await client.get("/sample?n=5", headers={"Accept": "text/csv"})
    assert refused.status_code == 406
    assert set(refused.json()) == {"detail", "errors"}


@pytest.mark.anyio
async def test_a_page_on_an_allowed_origin_may_read_the_headers(client: httpx.AsyncClient) -> None:
    answer = await client.get("/sample?n=3", headers={"Accept": RAW, "Origin": "http://page.example"})
    exposed = {name.strip().lower() for name in answer.headers["access-control-expose-headers"].split(",")}
    assert {"ctm-shape", "ctm-seed", "ctm-sigmas", "ctm-model-sha256"} <= exposed


def test_the_client_asks_for_raw_float32_and_reads_a_json_answer_too() -> None:
    """Against a server that answers JSON only (an older one), the client gets the same arrays."""
    seen: list[str] = []

    def json_only(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept"])
        if request.url.path == "/sample":
            return httpx.Response(200, json={"samples": [0.5, -1.25, 3.0e-8]})
        return httpx.Response(200, json={"n": 2, "sigmas": [10.0, 0.002], "paths": [[1.0, 2.0], [3.0, 4.0]]})

    with CTMClient("http://json.example", transport=httpx.MockTransport(json_only)) as ctm:
        samples = ctm.sample(3)
        path = ctm.trajectory(2)
    assert all(accept.startswith(RAW) and "application/json;q=0.5" in accept for accept in seen)
    np.testing.assert_array_equal(samples, np.array([0.5, -1.25, 3.0e-8], dtype=np.float32))
    np.testing.assert_array_equal(path.paths, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(path.sigmas, [10.0, 0.002])
