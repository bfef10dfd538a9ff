"""A typed Python client of the HTTP API: `CTMClient` (blocking) and `AsyncCTMClient` (asyncio).

    from service.client import CTMClient
    with CTMClient("http://127.0.0.1:8000", api_key=None) as ctm:
        samples = ctm.sample(1000, sampler="multistep", steps=4, seed=0)  # numpy array, shape (1000,)
        paths = ctm.trajectory(100, steps=8).paths  # shape (100, 9): each sample at each noise level
        logp = ctm.logprob([-1.0, 0.0, 1.0], density="ode")  # the PF-ODE's log-density at 3 points

Parameters left None are not sent, so the server's defaults apply (/docs describes them). An error
answer raises `CTMError` with the server's `detail` and `errors`; transport failures raise httpx's
exceptions. A GET whose connection fails before an answer comes (typically: the server closed an idle
kept-alive connection just as the request reused it) is retried once on a new connection; GETs are
idempotent, and POST /logprob (more than 100 points) is not retried.

Samples and paths come as raw float32 (`Accept: application/octet-stream`), the values exactly as
computed and no JSON to parse; a server that answers JSON is read as well.

This module needs only httpx and numpy: it imports neither torch nor the server.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import httpx
import numpy as np

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Past the server's own limit (CTM_REQUEST_TIMEOUT_S, 60 s by default), so that its 503 comes first.
DEFAULT_TIMEOUT_S = 75.0
API_KEY_HEADER = "X-API-Key"  # not the bearer token: that one carries the admin token
# The most points GET /logprob takes; more go in a POST body (10,000 at most).
MAX_GET_POINTS = 100
# The same names as ctm_core.samplers', repeated so that the client does not import torch.
SamplerName = Literal["onestep", "multistep", "gamma", "euler", "heun"]
NoiseMode = Literal["random", "quantile"]
DensityName = Literal["onestep", "ode"]
# What a server closing an idle kept-alive connection looks like to the request that reused it: no
# answer at all, a reset while reading or writing, or (the connection gone) a failed connect.
STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)
Params = list[tuple[str, str | int | float]]
# /sample and /trajectory answer their array in this encoding when asked: float32 as computed, no
# text to parse (the service's `service.api.encoding`).
RAW_FLOAT32 = "application/octet-stream"


class CTMError(Exception):
    """An error answer of the server: its status, its one-sentence `detail`, and the invalid inputs
    (`errors`: items with `loc`, `msg` and `type`; empty unless the request failed validation)."""

    def __init__(self, status_code: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.errors = errors or []


@dataclass(frozen=True)
class Trajectory:
    """The sampler's path: `sigmas`, the K + 1 noise levels visited (σ_max first), and `paths`, each
    sample's state at each of them, shape (n, K + 1); the last column is the samples."""

    sigmas: np.ndarray
    paths: np.ndarray


@dataclass(frozen=True)
class _Call:
    """One request, built the same way for both clients."""

    method: Literal["GET", "POST"]
    path: str
    params: Params | None = None
    body: bytes | None = None
    binary: bool = False  # ask for the array as raw float32 (a JSON answer is read as well)

    def options(self) -> dict[str, Any]:
        """httpx's request arguments besides the method and path."""
        headers = {"Content-Type": "application/json"} if self.body is not None else {}
        if self.binary:
            headers["Accept"] = f"{RAW_FLOAT32}, application/json;q=0.5"
        return {"params": self.params, "content": self.body, "headers": headers or None}


def _sampling_call(
    path: str,
    n: int,
    model: str | None,
    sampler: SamplerName | None,
    steps: int | None,
    sigmas: Sequence[float] | None,
    seed: int | None,
    noise: NoiseMode | None,
    gamma: float | None,
) -> _Call:
    given = {"n": n, "model": model, "sampler": sampler, "steps": steps, "seed": seed}
    given |= {"noise": noise, "gamma": gamma}
    params: Params = [(name, value) for name, value in given.items() if value is not None]
    if sigmas is not None:
        params += [("sigmas", float(level)) for level in sigmas]  # repeated: ?sigmas=10&sigmas=0.002
    return _Call("GET", path, params, binary=True)


def _logprob_call(x: Sequence[float] | np.ndarray, model: str | None, density: DensityName | None) -> _Call:
    points = [float(v) for v in np.asarray(x, dtype=np.float64).ravel()]
    if len(points) <= MAX_GET_POINTS:  # a GET, which may be retried
        params: Params = [("x", v) for v in points]
        params += [(name, v) for name, v in (("model", model), ("sampler", density)) if v is not None]
        return _Call("GET", "/logprob", params)
    # JSON has no inf or nan: send them as strings, which the server parses and refuses by name
    # ("x[3]: Input should be a finite number") as it does "inf" in a GET's query.
    body: dict[str, Any] = {"x": [v if math.isfinite(v) else str(v) for v in points]}
    body |= {name: v for name, v in (("model", model), ("sampler", density)) if v is not None}
    return _Call("POST", "/logprob", body=json.dumps(body).encode())


def _answer(response: httpx.Response) -> Any:
    """The JSON body of a success (a binary one as the same fields); `CTMError` for an error answer."""
    if response.is_success:
        if response.headers.get("content-type", "").startswith(RAW_FLOAT32):
            return _binary_body(response)
        return response.json()
    detail, errors = response.reason_phrase or "error", []
    try:
        body = response.json()
    except ValueError:  # not from the service itself (a proxy's page, the HTTP parser's 400)
        body = None
        detail = response.text.strip()[:200] or detail
    if isinstance(body, dict):
        detail = body["detail"] if isinstance(body.get("detail"), str) else detail
        errors = body["errors"] if isinstance(body.get("errors"), list) else []
    raise CTMError(response.status_code, detail, errors)


def _binary_body(response: httpx.Response) -> dict[str, Any]:
    """A raw float32 answer (docs/SERVING.md, "Binary answers") as the JSON answer's fields: the
    array is `samples` (shape (n,)) or `paths` (shape (n, levels), with `sigmas`)."""
    shape = tuple(int(size) for size in response.headers["ctm-shape"].split(","))
    values = np.frombuffer(response.content, dtype="<f4").reshape(shape)
    if len(shape) == 1:
        return {"samples": values}
    sigmas = [float(level) for level in response.headers["ctm-sigmas"].split(",")]
    return {"paths": values, "sigmas": sigmas, "n": shape[0]}


def _states(values: Any) -> np.ndarray:
    """Samples or path states as float32, the service's precision: each value exactly as computed
    (the JSON numbers are float32 values written in full)."""
    return np.array(values, dtype=np.float32)


def _log_densities(values: Any) -> np.ndarray:
    """log p per point as float64; null (density 0, `ctm_core.model.Model.logprob`'s -inf) as -inf."""
    return np.array([-np.inf if v is None else v for v in values], dtype=np.float64)


def _trajectory(body: dict[str, Any]) -> Trajectory:
    sigmas = np.array(body["sigmas"], dtype=np.float64)
    return Trajectory(sigmas=sigmas, paths=_states(body["paths"]).reshape(body["n"], sigmas.size))


def _client_options(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """What both clients pass to their httpx client."""
    headers = {API_KEY_HEADER: api_key} if api_key is not None else {}
    return {"base_url": base_url, "timeout": timeout, "headers": headers}


class CTMClient:
    """A blocking client of one ctm-serve server; use it as a context manager, or call `close()`.

    `api_key`: the server's CTM_API_KEY, sent as X-API-Key. `transport`: httpx's (tests use it to
    talk to an app in-process).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(**_client_options(base_url, api_key, timeout), transport=transport)

    def sample(
        self,
        n: int,
        model: str | None = None,
        sampler: SamplerName | None = None,
        steps: int | None = None,
        sigmas: Sequence[float] | None = None,
        seed: int | None = None,
        noise: NoiseMode | None = None,
        gamma: float | None = None,
    ) -> np.ndarray:
        """n samples (GET /sample), float32 of shape (n,); the same seed gives the same samples."""
        call = _sampling_call("/sample", n, model, sampler, steps, sigmas, seed, noise, gamma)
        return _states(self._send(call)["samples"])

    def trajectory(
        self,
        n: int,
        model: str | None = None,
        sampler: SamplerName | None = None,
        steps: int | None = None,
        sigmas: Sequence[float] | None = None,
        seed: int | None = None,
        noise: NoiseMode | None = None,
        gamma: float | None = None,
    ) -> Trajectory:
        """The noise levels and every sample's state at each (GET /trajectory; sampler default multistep)."""
        call = _sampling_call("/trajectory", n, model, sampler, steps, sigmas, seed, noise, gamma)
        return _trajectory(self._send(call))

    def logprob(
        self, x: Sequence[float] | np.ndarray, model: str | None = None, density: DensityName | None = None
    ) -> np.ndarray:
        """log p(x) per point, float64 (-inf where the density is 0); `density`: onestep
        (the server's default), the one-step sampler's, or ode, the probability-flow ODE's. Up to 100
        points go as a GET, more (to 10,000) as a POST."""
        return _log_densities(self._send(_logprob_call(x, model, density))["logprob"])

    def models(self) -> dict[str, Any]:
        """GET /models as answered: `models` (each one's description), `default_model`, `rejected`."""
        return self._send(_Call("GET", "/models"))

    def health(self) -> dict[str, Any]:
        """GET /healthz: {"status": "ok"} while the server runs."""
        return self._send(_Call("GET", "/healthz"))

    def _send(self, call: _Call) -> Any:
        try:
            response = self._request(call)
        except STALE_CONNECTION_ERRORS:
            if call.method != "GET":
                raise
            response = self._request(call)  # once, on a new connection: the broken one is gone
        return _answer(response)

    def _request(self, call: _Call) -> httpx.Response:
        return self._http.request(call.method, call.path, **call.options())

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class AsyncCTMClient:
    """`CTMClient` for asyncio: the same methods, awaited; use `async with`, or await `aclose()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(**_client_options(base_url, api_key, timeout), transport=transport)

    async def sample(
        self,
        n: int,
        model: str | None = None,
        sampler: SamplerName | None = None,
        steps: int | None = None,
        sigmas: Sequence[float] | None = None,
        seed: int | None = None,
        noise: NoiseMode | None = None,
        gamma: float | None = None,
    ) -> np.ndarray:
        """See `CTMClient.sample`."""
        call = _sampling_call("/sample", n, model, sampler, steps, sigmas, seed, noise, gamma)
        return _states((await self._send(call))["samples"])

    async def trajectory(
        self,
        n: int,
        model: str | None = None,
        sampler: SamplerName | None = None,
        steps: int | None = None,
        sigmas: Sequence[float] | None = None,
        seed: int | None = None,
        noise: NoiseMode | None = None,
        gamma: float | None = None,
    ) -> Trajectory:
        """See `CTMClient.trajectory`."""
        call = _sampling_call("/trajectory", n, model, sampler, steps, sigmas, seed, noise, gamma)
        return _trajectory(await self._send(call))

    async def logprob(
        self, x: Sequence[float] | np.ndarray, model: str | None = None, density: DensityName | None = None
    ) -> np.ndarray:
        """See `CTMClient.logprob`."""
        return _log_densities((await self._send(_logprob_call(x, model, density)))["logprob"])

    async def models(self) -> dict[str, Any]:
        """See `CTMClient.models`."""
        return await self._send(_Call("GET", "/models"))

    async def health(self) -> dict[str, Any]:
        """See `CTMClient.health`."""
        return await self._send(_Call("GET", "/healthz"))

    async def _send(self, call: _Call) -> Any:
        try:
            response = await self._request(call)
        except STALE_CONNECTION_ERRORS:
            if call.method != "GET":
                raise
            response = await self._request(call)  # once, on a new connection: the broken one is gone
        return _answer(response)

    async def _request(self, call: _Call) -> httpx.Response:
        return await self._http.request(call.method, call.path, **call.options())

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()
