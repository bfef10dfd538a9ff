"""Fuzzing the HTTP API: schemathesis against the service's own OpenAPI document, then hostile inputs by hand.

Schemathesis runs in-process (ASGI) over every operation, with data that fits the schema and data
that breaks it. Every response must be no 5xx, have a declared status, content type, headers and
body schema, and every 4xx must carry a message. The app runs with small request limits, so that
cases at and beyond every limit stay fast; the hand-written cases use the default limits.
`FUZZ_EXAMPLES` (examples per operation and pass, default 100) scales the run and `FUZZ_RANDOM=1`
draws fresh cases instead of the same ones each time; docs/RELIABILITY.md records a large run.
"""

import math
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ctm_core.config import MAX_SEED
from service.app import create_app
from service.config import Settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"  # fresh cases each run, instead of the same ones
MIN_REQUESTS = 1000
# Heavier operations (figures, densities) get fewer examples; they add little beyond the limits.
FEWER = {"GET /plot.png": 0.2, "GET /models/{name}/density": 0.5, "GET /evaluate": 0.5}
# A bisection through the one-step map (onestep) or an ODE solve (ode), with autograd, per request.
FEWER |= {"GET /logprob": 0.25, "POST /logprob": 0.25}
FEWER["POST /admin/reload"] = 0.1  # every request without the token gets the same 401
SMALL_LIMITS = {"max_n": 500, "max_steps": 20, "max_trajectory_values": 5000}
ADMIN_TOKEN = "fuzz-admin-token-0123456789"


def not_a_server_error(response: Any) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"


def error_has_message(response: Any) -> None:
    """A 4xx says what was wrong: a non-empty `detail` string, and `errors`, a list of items each with
    a `msg` (empty unless the request failed validation)."""
    if not 400 <= response.status_code < 500:
        return
    body = response.json()
    detail, errors = body.get("detail"), body.get("errors")
    assert isinstance(detail, str) and detail.strip(), body
    assert isinstance(errors, list) and all(isinstance(e, dict) and e.get("msg") for e in errors), body


CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance]
CHECKS.append(response_schema_conformance)


@pytest.fixture(scope="module")
def fuzz_dir(_fixture_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "checkpoints"
    shutil.copytree(_fixture_checkpoints, folder)
    (folder / "broken.safetensors").write_bytes(b"\x00" * 64)  # so /models lists a rejected file
    return folder


@pytest.fixture(scope="module")
def api_schema(fuzz_dir: Path) -> Iterator[Any]:
    keep = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CTM_")}
    app = create_app(
        Settings(checkpoint_dir=fuzz_dir, admin_token=ADMIN_TOKEN, log_level="warning", **SMALL_LIMITS)
    )
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()
        os.environ.update(keep)


def test_schemathesis_every_operation(api_schema: Any) -> None:
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"GET /sample", "GET /trajectory", "GET /models", "GET /models/{name}", "GET /healthz"} <= labels
    assert {"GET /readyz", "GET /metrics", "POST /admin/reload"} <= labels
    for operation in operations:
        # Random names are unknown models (404); a third pass pins a loaded one so the sampling runs.
        names = {p.name for p in operation.iter_parameters()}
        pinned = {"query": {"model": "gauss_1D"}} if "model" in names else {}
        pinned = {"path_parameters": {"name": "two_gmm_1D"}} if "name" in names else pinned
        passes = [(GenerationMode.POSITIVE, {}), (GenerationMode.NEGATIVE, {})]
        passes += [(GenerationMode.POSITIVE, pinned)] if pinned else []
        for mode, fixed in passes:
            examples = max(5, int(EXAMPLES * FEWER.get(operation.label, 1)))

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=not RANDOM,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode, **fixed))
            def fuzz(case: Any) -> None:
                response = case.call()
                sent[case.operation.label] += 1
                statuses[response.status_code] += 1
                not_a_server_error(response)
                error_has_message(response)
                case.validate_response(response, checks=CHECKS)

            try:
                fuzz()
            except Unsatisfiable:
                # No parameter to break (e.g. /healthz): nothing negative to send.
                assert mode == GenerationMode.NEGATIVE, operation.label
    total = sum(sent.values())
    print(f"schemathesis: {total} requests; by operation {dict(sent)}; statuses {sorted(statuses.items())}")
    assert set(sent) == labels
    assert total >= MIN_REQUESTS
    assert not any(code >= 500 for code in statuses)


# ---- hostile inputs by hand, default limits ------------------------------------------------------


@pytest.fixture
async def client(fuzz_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    for key in list(os.environ):
        if key.startswith("CTM_"):
            monkeypatch.delenv(key)
    app = create_app(Settings(checkpoint_dir=fuzz_dir, log_level="warning"))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client


def _assert_refused(response: httpx.Response, status: int = 422) -> None:
    assert response.status_code == status, response.text
    error_has_message(response)


HUGE = [str(2**63), str(2**64 + 1), "9" * 400, "-" + "9" * 400, "1e400", "0x10", "1_000"]
NOT_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999"]
FLOATS_AS_STRINGS = ["1.0", "2.5", " 3", "3 ", "+4", "٣", "1e3"]


@pytest.mark.anyio
async def test_hostile_integers(client: httpx.AsyncClient) -> None:
    # Pydantic's lax mode reads "1.0", " 3", "+4", "1e3" or "1_000" as the integer they spell.
    spelled = {"1.0", "3", "+4", "1e3", "1_000"}
    values = HUGE + NOT_FINITE + FLOATS_AS_STRINGS + ["", " ", "null", "[]", "{}"]
    for field in ("n", "steps", "seed"):
        for value in values:
            # /evaluate and /plot.png share this validation (tested by schemathesis above).
            for url in ("/sample", "/trajectory"):
                response = await client.get(url, params={"sampler": "multistep", "n": 3} | {field: value})
                if response.status_code == 200:
                    assert value.strip() in spelled, (url, field, value)
                else:
                    _assert_refused(response)


@pytest.mark.anyio
async def test_hostile_floats(client: httpx.AsyncClient) -> None:
    for value in [*NOT_FINITE, *HUGE, "-0.0001", "1.0001", "", "½"]:
        for url, params in (
            ("/sample", {"sampler": "gamma", "steps": 2, "gamma": value}),
            ("/models/two_gmm_1D/density", {"lo": value, "hi": "1"}),
            ("/models/two_gmm_1D/density", {"lo": "-1", "hi": value}),
        ):
            response = await client.get(url, params=params)
            if response.status_code == 200:
                assert math.isfinite(float(value)), (url, value)
            else:
                _assert_refused(response)
        # An explicit middle level between the default model's σ_max = 10 and σ_min = 0.002: only
        # a finite number strictly between them is a valid schedule.
        for url in ("/sample", "/trajectory"):
            response = await client.get(url, params={"sampler": "multistep", "sigmas": f"10,{value},0.002"})
            if response.status_code == 200:
                assert 0.002 < float(value) < 10, (url, value)
                assert response.json()["steps"] == 2
            else:
                _assert_refused(response)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"n": 100_000}, 200),
        ({"n": 100_001}, 422),
        ({"sampler": "euler", "steps": 1000, "n": 1}, 200),
        ({"sampler": "euler", "steps": 1001, "n": 1}, 422),
        ({"n": 1}, 200),
        ({"n": 0}, 422),
        ({"seed": MAX_SEED}, 200),
        ({"seed": MAX_SEED + 1}, 422),
        ({"seed": 0}, 200),
        ({"seed": -1}, 422),
    ],
)
async def test_limits_at_and_beyond(client: httpx.AsyncClient, params: dict[str, Any], status: int) -> None:
    response = await client.get("/sample", params=params)
    assert response.status_code == status, response.text
    error_has_message(response)


@pytest.mark.anyio
async def test_trajectory_limit_at_and_beyond(client: httpx.AsyncClient) -> None:
    at = await client.get("/trajectory", params={"sampler": "multistep", "steps": 9, "n": 100_000})
    assert at.status_code == 200  # exactly 1,000,000 values
    assert len(at.json()["paths"]) == 100_000
    _assert_refused(
        await client.get("/trajectory", params={"sampler": "multistep", "steps": 10, "n": 90_910})
    )


@pytest.mark.anyio
async def test_empty_and_repeated_parameters(client: httpx.AsyncClient) -> None:
    for query in ("n=", "steps=", "model=", "sampler=", "seed=", "gamma=", "noise=", "n", "&&&", "=&="):
        response = await client.get(f"/sample?{query}")
        assert response.status_code in (200, 404, 422), (query, response.text)
        if response.status_code != 200:
            error_has_message(response)
    # Repeated scalars: the last one wins (Starlette's rule), and the answer says which was used.
    body = (await client.get("/sample?n=5&n=7&seed=1&seed=2")).json()
    assert (body["n"], body["seed"]) == (7, 2)
    _assert_refused(await client.get("/sample?n=5&n=0"))
    _assert_refused(await client.get("/sample?n=5&n=abc"))


@pytest.mark.anyio
async def test_very_long_query_strings(client: httpx.AsyncClient) -> None:
    long_value = "x" * 30_000  # just inside CTM_MAX_URL_BYTES (32 kB)
    _assert_refused(await client.get("/sample", params={"model": long_value}), 404)
    _assert_refused(await client.get("/sample", params={"sampler": long_value}))
    _assert_refused(await client.get("/sample", params={"n": "1" * 30_000}))
    many = "&".join(f"p{i}={i}" for i in range(2500))  # unknown parameters: 422 naming a few
    refused = await client.get(f"/sample?n=3&{many}")
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert "unknown query parameter 'p0'" in detail and "and 2490 more" in detail
    detail = (await client.get("/sample", params={"model": long_value})).json()["detail"]
    assert len(detail) < 400  # the name is echoed shortened
    # Over the limit: 414 before any parameter is parsed (httpx's own limit is 65,536 characters).
    too_long = await client.get("/sample", params={"model": "x" * 60_000})
    assert too_long.status_code == 414
    assert "CTM_MAX_URL_BYTES" in too_long.json()["detail"]


MODEL_NAMES = [
    "../two_gmm_1D",
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "two_gmm_1D/../gauss_1D",
    "two_gmm_1D.safetensors",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "two_gmm_1D\x00",
    "C:\\Windows\\system.ini",
    "\\\\server\\share",
    "ünïcødé",
    "模型",
    "🙂",
    "\u202etwo_gmm_1D",
    "two_gmm_1D\u200b",
    "TWO_GMM_1D",
    " two_gmm_1D",
    "two_gmm_1D\n",
    "<script>alert(1)</script>",
    "'; DROP TABLE models; --",
    "${jndi:ldap://x}",
]


@pytest.mark.anyio
async def test_model_names_never_reach_the_filesystem(client: httpx.AsyncClient) -> None:
    for name in MODEL_NAMES:
        for url in ("/sample", "/trajectory", "/evaluate", "/plot.png"):
            response = await client.get(url, params={"model": name})
            _assert_refused(response, 404)
            assert "unknown model" in response.json()["detail"]
        # Every byte percent-encoded, so the client does not normalise "..": the server sees the name as is.
        encoded = "".join(f"%{byte:02X}" for byte in name.encode())
        for path in (f"/models/{encoded}", f"/models/{encoded}/density"):
            response = await client.get(path)
            assert response.status_code in (404, 405), (path, response.status_code)
            error_has_message(response)


@pytest.mark.anyio
async def test_bytes_that_are_not_utf8(client: httpx.AsyncClient) -> None:
    for query in ("model=%FF%FE", "model=%ED%B3%BF", "n=%FF", "sampler=%C0%AE%C0%AE"):
        response = await client.get(f"/sample?{query}")
        assert response.status_code in (404, 422), (query, response.status_code)
        error_has_message(response)
    response = await client.get("/models/%FF%FE")
    assert response.status_code == 404
    error_has_message(response)


@pytest.mark.anyio
async def test_wrong_methods_and_odd_paths(client: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = await client.request(method, "/sample")
        assert response.status_code == 405
        error_has_message(response)
    response = await client.post("/admin/reload")  # no CTM_ADMIN_TOKEN: the endpoint does not exist
    assert response.status_code == 404
    for path in ("/static/%2E%2E/app.py", "/static/..%2Fapp.py", "/static/explorer.html", "/models/%2E%2E"):
        response = await client.get(path)
        assert response.status_code == 404, path
        error_has_message(response)
