"""Request limits: sizes refused before parsing (413, 414, 431), the work budget (422), bodies parsed
off the event loop, and work stopped when its request times out."""

import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from app_client import serve
from real_server import running_server

from ctm_core.likelihood import ode_evaluations, onestep_evaluations
from service.config import Settings
from service.limits import parser_buffer_bytes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(checkpoint_dir, max_body_bytes=100_000, max_work=1_000_000) as c:
        yield c


# --- sizes -----------------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_refused_by_its_content_length(client: httpx.AsyncClient) -> None:
    body = json.dumps({"x": [0.5] * 30_000}).encode()  # 150 kB > 100 kB
    response = await client.post("/logprob", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "CTM_MAX_BODY_BYTES" in response.json()["detail"]
    assert "connection" not in response.headers  # a few limits over: the rest is read and discarded


async def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(client: httpx.AsyncClient) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(100):  # 1 MB in all, without a Content-Length
            sent.append(i)
            yield b" " * 10_000

    response = await client.post("/logprob", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "CTM_MAX_BODY_BYTES" in response.json()["detail"]
    assert len(sent) <= 12  # read up to just past 100 kB, then refused


async def test_a_body_inside_the_limit_is_answered(client: httpx.AsyncClient) -> None:
    response = await client.post("/logprob", json={"x": [0.5] * 5000})  # ~25 kB
    assert response.status_code == 200
    assert len(response.json()["logprob"]) == 5000


async def test_a_long_url_gets_414_and_large_headers_431(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, max_url_bytes=2048, max_header_bytes=2048) as client:
        long = await client.get("/sample", params={"n": 5, "model": "m" * 3000})
        assert long.status_code == 414
        assert "CTM_MAX_URL_BYTES" in long.json()["detail"]
        big = await client.get("/sample", params={"n": 5}, headers={"x-padding": "p" * 3000})
        assert big.status_code == 431
        assert "CTM_MAX_HEADER_BYTES" in big.json()["detail"]
        fits = await client.get("/sample", params={"n": 5}, headers={"x-padding": "p" * 1000})
        assert fits.status_code == 200


async def test_the_default_limits_admit_the_largest_legal_requests(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, request_timeout_s=0) as client:
        # 10,000 points, each the longest float repr, pretty-printed: well inside CTM_MAX_BODY_BYTES.
        points = [-1.2345678901234567e-300] * 10_000
        body = json.dumps({"x": points, "sampler": "onestep"}, indent=4).encode()
        assert len(body) < Settings().max_body_bytes
        response = await client.post("/logprob", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200
        # CTM_MAX_STEPS + 1 levels, comma-separated with long reprs: inside CTM_MAX_URL_BYTES.
        levels = [10.0] + [10.0 - 9.99 * (i / 1000) ** 0.5 + 1e-13 for i in range(1, 1000)] + [0.002]
        query = "sigmas=" + ",".join(repr(v) for v in levels)
        assert len(f"/trajectory?sampler=multistep&n=1&{query}") < Settings().max_url_bytes
        path = await client.get(f"/trajectory?sampler=multistep&n=1&{query}")
        assert path.status_code == 200, path.text
        assert len(path.json()["sigmas"]) == 1001


# --- bodies ---------------------------------------------------------------------------------------


async def test_body_errors_keep_fastapis_shape(client: httpx.AsyncClient) -> None:
    json_type = {"content-type": "application/json"}
    cases = {
        b"{not json": "json_invalid",
        b'{"x": []}': "too_short",
        b'{"x": [1, "a"]}': "float_parsing",
        b"[1, 2]": "model_type",
        b"\x80\x81": "json_invalid",
        b'{"x": [1e999]}': "finite_number",  # parses as inf, echoed as null rather than failing
    }
    for body, kind in cases.items():
        response = await client.post("/logprob", content=body, headers=json_type)
        assert response.status_code == 422, (body, response.text)
        errors = response.json()["errors"]
        assert errors[0]["type"] == kind
        assert errors[0]["loc"][0] == "body"
    plain = await client.post("/logprob", content=b'{"x": [1]}', headers={"content-type": "text/plain"})
    assert plain.status_code == 422
    assert "application/json" in plain.json()["detail"]


async def test_openapi_still_declares_the_logprob_body(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/logprob"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/LogProbRequest"}
    assert "x" in document["components"]["schemas"]["LogProbRequest"]["properties"]


# --- the work budget ------------------------------------------------------------------------------


async def test_sampling_over_the_work_budget_is_refused_up_front(client: httpx.AsyncClient) -> None:
    # heun with 100 steps spends 2·100 − 1 = 199 evaluations a sample: 5,025 samples fit in 10⁶.
    inside = await client.get("/sample", params={"sampler": "heun", "steps": 100, "n": 5025})
    assert inside.status_code == 200
    over = await client.get("/sample", params={"sampler": "heun", "steps": 100, "n": 5026})
    assert over.status_code == 422
    detail = over.json()["detail"]
    assert "n × NFE = 5026 × 199 = 1000174" in detail
    assert "CTM_MAX_WORK" in detail and "n ≤ 5025" in detail
    path = await client.get("/trajectory", params={"sampler": "multistep", "steps": 200, "n": 5001})
    assert path.status_code == 422
    assert "5001 × 200" in path.json()["detail"]


async def test_density_over_the_work_budget_is_refused_up_front(checkpoint_dir: Path) -> None:
    budget = 2000 * ode_evaluations()
    async with serve(checkpoint_dir, max_work=budget) as client:
        assert (await client.post("/logprob", json={"x": [0.1] * 2000, "sampler": "ode"})).status_code == 200
        over = await client.post("/logprob", json={"x": [0.1] * 2001, "sampler": "ode"})
        assert over.status_code == 422
        assert f"2001 × {ode_evaluations()}" in over.json()["detail"]
        # The one-step density needs far fewer evaluations a point.
        assert 2001 * onestep_evaluations() <= budget
        onestep = await client.post("/logprob", json={"x": [0.1] * 2001, "sampler": "onestep"})
        assert onestep.status_code == 200


# --- the real server: the HTTP parser's bound, and timed-out work stopped ---------------------------


@pytest.fixture
def server(tmp_path: Path, checkpoint_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    log_path = tmp_path / "server.log"
    env = {"CTM_REQUEST_TIMEOUT_S": "1", "CTM_INFERENCE_THREADS": "1", "CTM_TORCH_THREADS": "1"}
    with running_server(checkpoint_dir, log_path, env) as (base_url, process):
        yield base_url, process, log_path


def _exchange(base_url: str, head: bytes, body: bytes = b"") -> bytes:
    """Send raw bytes to the server; everything it answers before closing (or 5 s)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def test_the_real_server_refuses_sizes_before_reading_them(
    server: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    base_url = server[0]
    # A 400 MB body announced, none of it sent: the answer comes at once, without waiting for it.
    head = (
        b"POST /logprob HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
        b"content-length: 400000000\r\n\r\n"
    )
    started = time.perf_counter()
    answer = _exchange(base_url, head)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert time.perf_counter() - started < 2
    # Headers beyond even the parser's buffer: closed with 400 by uvicorn, never buffered whole.
    huge = b"x-padding: " + b"p" * (2 * parser_buffer_bytes(Settings())) + b"\r\n"
    answer = _exchange(base_url, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + huge + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    with httpx.Client(base_url=base_url) as client:
        assert client.get("/healthz").status_code == 200


async def test_a_client_that_reads_only_after_sending_gets_the_413(
    server: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    """httpx's async client sends the whole body before reading: a 20 MB body (20 limits) must not
    find the connection closed under it; the server discards the body without holding it."""
    base_url, process, _ = server
    body = b'{"x": [' + b"0.5, " * 4_000_000 + b"0.5]}"
    json_type = {"content-type": "application/json"}
    before = _rss_mb(process.pid)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for _ in range(3):
            assert (await client.post("/logprob", content=body, headers=json_type)).status_code == 413
        assert (await client.get("/healthz")).status_code == 200  # the same connection, still good
    assert _rss_mb(process.pid) - before < 20  # discarded as it came, never held


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def test_a_timed_out_request_stops_using_the_cpu(server: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    base_url, process, log_path = server
    # About 10 s of sampling on one thread, legal under the default budget; the limit is 1 s.
    params = {"sampler": "heun", "steps": 250, "n": 100_000}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        response = client.get("/sample", params=params)
        assert response.status_code == 503
        time.sleep(0.5)  # the next step's check, at most one heun step (~20 ms) away
        before = _cpu_seconds(process.pid)
        time.sleep(1.0)
        assert _cpu_seconds(process.pid) - before < 0.2  # idle: the sampling stopped
        assert client.get("/healthz").status_code == 200
    assert "sampling stopped, its requests gone" in log_path.read_text()
