"""service.client against the real server (`python -m service` in a subprocess): the same numbers as
a raw HTTP request, errors as `CTMError`, and a GET retried once when a kept-alive connection was
closed under it (a relay that drops the second request of each connection stands in for a server
whose keep-alive timeout ran out just as the request was sent)."""

import contextlib
import dataclasses
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import numpy as np
import pytest
from real_server import running_server

import ctm_core.samplers
import service.api.routes.likelihood
from service.app import create_app
from service.client import (
    STALE_CONNECTION_ERRORS,
    AsyncCTMClient,
    CTMClient,
    CTMError,
    DensityName,
    NoiseMode,
    SamplerName,
    Trajectory,
    _answer,
)
from service.config import Settings

API_KEY = "api-key-for-client-tests-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server_url(_fixture_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module, on the two fixture models (two_gmm_1D, the default, and gauss_1D)."""
    folder = tmp_path_factory.mktemp("client") / "checkpoints"
    shutil.copytree(_fixture_checkpoints, folder)
    with running_server(folder, folder.parent / "server.log") as (base_url, _process):
        yield base_url


class KeepAliveDropper:
    """A TCP relay to the server that passes each connection's first request and its answer, then
    closes the connection, unanswered, when a second request arrives on it."""

    def __init__(self, upstream: str) -> None:
        host, port = httpx.URL(upstream).host, httpx.URL(upstream).port
        assert port is not None
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        answered = threading.Event()
        with client, socket.create_connection(self.upstream) as upstream:

            def back() -> None:
                with contextlib.suppress(OSError):
                    while data := upstream.recv(65536):
                        answered.set()
                        client.sendall(data)

            threading.Thread(target=back, daemon=True).start()
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    if answered.is_set():  # a request on a reused connection: close it unanswered
                        self.dropped += 1
                        break
                    upstream.sendall(data)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def dropper(server_url: str) -> Iterator[KeepAliveDropper]:
    relay = KeepAliveDropper(server_url)
    try:
        yield relay
    finally:
        relay.close()


def raw_get(base_url: str, path: str, params: Any) -> Any:
    response = httpx.get(base_url + path, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# --- the blocking client ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        {"seed": 3},
        {"model": "gauss_1D", "sampler": "gamma", "steps": 3, "gamma": 0.25, "seed": 11},
        {"sampler": "heun", "steps": 2, "noise": "quantile", "seed": 0},
    ],
)
def test_sample_equals_a_raw_get(server_url: str, given: dict[str, Any]) -> None:
    with CTMClient(server_url) as ctm:
        samples = ctm.sample(257, **given)
    expected = raw_get(server_url, "/sample", {"n": 257, **given})["samples"]
    assert samples.dtype == np.float32 and samples.shape == (257,)
    np.testing.assert_array_equal(samples, np.array(expected, dtype=np.float32))


def test_sigmas_are_sent_as_levels(server_url: str) -> None:
    with CTMClient(server_url) as ctm:
        samples = ctm.sample(50, sampler="multistep", sigmas=[10.0, 1.0, 0.002], seed=5)
        path = ctm.trajectory(50, sigmas=np.array([10.0, 0.5, 0.002]), seed=5)
    raw = raw_get(server_url, "/sample", {"n": 50, "sampler": "multistep", "sigmas": "10,1,0.002", "seed": 5})
    np.testing.assert_array_equal(samples, np.array(raw["samples"], dtype=np.float32))
    np.testing.assert_array_equal(path.sigmas, [10.0, 0.5, 0.002])


def test_trajectory_shapes(server_url: str) -> None:
    with CTMClient(server_url) as ctm:
        path = ctm.trajectory(7, steps=4, seed=0)  # sampler not sent: the server's multistep
        samples = ctm.sample(7, sampler="multistep", steps=4, seed=0)
    assert isinstance(path, Trajectory)
    assert path.sigmas.shape == (5,) and path.paths.shape == (7, 5)
    assert path.sigmas[0] == 10.0 and path.sigmas[-1] == pytest.approx(0.002)
    np.testing.assert_array_equal(path.paths[:, -1], samples)
    raw = raw_get(server_url, "/trajectory", {"n": 7, "steps": 4, "seed": 0})
    np.testing.assert_array_equal(path.paths, np.array(raw["paths"], dtype=np.float32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        path.sigmas = np.zeros(5)  # type: ignore[misc]


def test_logprob_by_get_and_by_post(server_url: str) -> None:
    few = [-1.5, 0.0, 1.5]
    many = np.linspace(-3, 3, 150)
    with CTMClient(server_url) as ctm:
        onestep = ctm.logprob(few)
        ode = ctm.logprob(few, model="gauss_1D", density="ode")
        posted = ctm.logprob(many)  # over 100 points: a POST
    raw = raw_get(server_url, "/logprob", {"x": few})
    assert raw["density"] == "onestep"
    np.testing.assert_array_equal(onestep, np.array(raw["logprob"]))
    raw_ode = raw_get(server_url, "/logprob", {"x": few, "model": "gauss_1D", "sampler": "ode"})
    np.testing.assert_array_equal(ode, np.array(raw_ode["logprob"]))
    raw_post = httpx.post(server_url + "/logprob", json={"x": many.tolist()}, timeout=30).json()
    assert posted.shape == (150,)
    np.testing.assert_array_equal(
        posted, np.array([-np.inf if v is None else v for v in raw_post["logprob"]])
    )


def test_models_and_health(server_url: str) -> None:
    with CTMClient(server_url) as ctm:
        listed = ctm.models()
        assert ctm.health() == {"status": "ok"}
    assert listed == raw_get(server_url, "/models", None)
    assert [m["name"] for m in listed["models"]] == ["gauss_1D", "two_gmm_1D"]
    assert listed["default_model"] == "two_gmm_1D"


def test_error_answers_raise_ctm_error(server_url: str) -> None:
    with CTMClient(server_url) as ctm:
        with pytest.raises(CTMError) as invalid:
            ctm.sample(0, steps=0, sampler="multistep")
        with pytest.raises(CTMError) as unknown:
            ctm.sample(3, model="nope")
        with pytest.raises(CTMError) as rule:
            ctm.sample(3, sampler="onestep", steps=2)
        with pytest.raises(CTMError) as not_finite:
            ctm.logprob([0.0, float("inf")])
        with pytest.raises(CTMError) as not_finite_posted:
            ctm.logprob([0.0] * 150 + [float("nan")])
    assert invalid.value.status_code == 422
    assert "n: Input should be greater than or equal to 1" in invalid.value.detail
    assert {tuple(e["loc"]) for e in invalid.value.errors} == {("query", "n"), ("query", "steps")}
    assert str(invalid.value).startswith("422: ")
    assert unknown.value.status_code == 404 and "unknown model 'nope'" in unknown.value.detail
    assert unknown.value.errors == []
    assert rule.value.status_code == 422 and "onestep" in rule.value.detail
    assert not_finite.value.status_code == 422 and "finite" in not_finite.value.detail
    assert not_finite_posted.value.status_code == 422
    assert not_finite_posted.value.detail == "x[150]: Input should be a finite number"


def test_an_answer_that_is_not_the_service_s_still_raises() -> None:
    """A proxy's HTML page (a 502, say) has no JSON `detail`: its text stands in."""
    with pytest.raises(CTMError) as error:
        _answer(httpx.Response(502, text="<html>bad gateway</html>"))
    assert (error.value.status_code, error.value.detail, error.value.errors) == (
        502,
        "<html>bad gateway</html>",
        [],
    )


def test_a_get_is_retried_once_on_a_closed_kept_alive_connection(dropper: KeepAliveDropper) -> None:
    with httpx.Client(base_url=dropper.url, timeout=30) as raw:  # without a retry, the second fails
        assert raw.get("/healthz").status_code == 200
        with pytest.raises(STALE_CONNECTION_ERRORS):
            raw.get("/healthz")
    assert dropper.dropped == 1
    with CTMClient(dropper.url) as ctm:
        first = ctm.sample(9, seed=4)
        again = ctm.sample(9, seed=4)  # sent on the kept-alive connection, dropped, sent again
        assert ctm.health() == {"status": "ok"}
    np.testing.assert_array_equal(first, again)
    assert dropper.dropped == 3 and dropper.connections == 4


def test_a_post_is_not_retried(dropper: KeepAliveDropper) -> None:
    with CTMClient(dropper.url) as ctm:
        ctm.health()
        with pytest.raises(STALE_CONNECTION_ERRORS):
            ctm.logprob(np.zeros(101))  # POST /logprob: not idempotent by HTTP's rules
    assert dropper.dropped == 1


def test_client_types_match_the_server() -> None:
    """The client repeats ctm_core's names so that it need not import torch; they must not drift."""
    assert get_args(SamplerName) == get_args(ctm_core.samplers.SamplerName)
    assert get_args(NoiseMode) == get_args(ctm_core.samplers.NoiseMode)
    assert get_args(DensityName) == get_args(service.api.routes.likelihood.DensityName)


# --- the asyncio client ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_answers_as_the_blocking_one(server_url: str) -> None:
    async with AsyncCTMClient(server_url) as ctm:
        samples = await ctm.sample(100, sampler="multistep", steps=3, seed=8)
        path = await ctm.trajectory(10, steps=2, seed=1)
        logp = await ctm.logprob([0.0, 0.5])
        listed = await ctm.models()
        health = await ctm.health()
        with pytest.raises(CTMError) as invalid:
            await ctm.sample(3, gamma=0.5)  # gamma with the onestep sampler: refused by name
    with CTMClient(server_url) as blocking:
        np.testing.assert_array_equal(samples, blocking.sample(100, sampler="multistep", steps=3, seed=8))
        np.testing.assert_array_equal(logp, blocking.logprob([0.0, 0.5]))
    assert path.paths.shape == (10, 3) and listed["default_model"] == "two_gmm_1D"
    assert health == {"status": "ok"}
    assert invalid.value.status_code == 422 and "gamma" in invalid.value.detail


@pytest.mark.anyio
async def test_async_get_is_retried_once(dropper: KeepAliveDropper) -> None:
    async with AsyncCTMClient(dropper.url) as ctm:
        first = await ctm.sample(9, seed=4)
        again = await ctm.sample(9, seed=4)
    np.testing.assert_array_equal(first, again)
    assert dropper.dropped == 1 and dropper.connections == 2


@pytest.fixture
async def app_with_key(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncBaseTransport]:
    """An in-process app that needs CTM_API_KEY, as an httpx transport."""
    app = create_app(Settings(checkpoint_dir=checkpoint_dir, api_key=API_KEY))
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app)


@pytest.mark.anyio
async def test_the_api_key_is_sent(app_with_key: httpx.AsyncBaseTransport) -> None:
    async with AsyncCTMClient("http://testserver", api_key=API_KEY, transport=app_with_key) as ctm:
        assert (await ctm.sample(4, seed=1)).shape == (4,)
    async with AsyncCTMClient("http://testserver", transport=app_with_key) as keyless:
        with pytest.raises(CTMError) as refused:
            await keyless.sample(4)
    assert refused.value.status_code == 401 and "API key" in refused.value.detail
