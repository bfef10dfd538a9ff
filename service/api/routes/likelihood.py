"""POST /logprob and GET /logprob: the served model's exact log-density at given points."""

import math
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field

from ctm_core.likelihood import log_prob
from service.api.deps import EngineDep, RegistryDep, SettingsDep, lookup_model, unprocessable
from service.api.responses import json_response
from service.registry import LoadedModel
from service.schemas import ErrorResponse, ValidationErrorResponse
from service.telemetry import label_request

MAX_POST_POINTS = 10_000
MAX_GET_POINTS = 100
ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "Unknown model."},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {
        "model": ValidationErrorResponse,
        "description": "No points, too many points, or a point that is not a finite number.",
    },
}


class LogProbRequest(BaseModel):
    """Points at which to evaluate log p; `model` defaults to the server's default model."""

    model: str | None = Field(None, max_length=200)
    x: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1, max_length=MAX_POST_POINTS)


class LogProbResponse(BaseModel):
    """log p(x) under the model, in nats, one per point (same order as `x`)."""

    model: str
    model_sha256: str
    x: list[float]
    logprob: list[float | None] = Field(
        description="null where log p is not a finite number (x beyond float32's range, |x| > 3.4e38)."
    )


def model_log_prob(model: LoadedModel, x: list[float]) -> np.ndarray:
    """log p(x) by the PF-ODE of the served model's denoiser g(x, t, t) (see ctm_core.likelihood)."""
    noise = model.checkpoint.noise
    network = model.network
    points = torch.tensor(x, dtype=torch.float32, device=next(network.parameters()).device)
    values = log_prob(
        network, points, noise.sigma_min, noise.sigma_max, rho=noise.rho, data_mean=noise.data_mean or 0.0
    )
    return values.cpu().numpy()


async def _answer(engine: Any, model: LoadedModel, x: list[float]) -> Response:
    logprob = await engine.call(model_log_prob, model, x)
    payload = {"model": model.name, "model_sha256": model.sha256, "x": np.asarray(x), "logprob": logprob}
    return await json_response(payload, values=2 * len(x))


router = APIRouter(tags=["likelihood"])


@router.post("/logprob", response_model=LogProbResponse, responses=ERRORS, summary="Log-density at points")
async def logprob_post(
    body: LogProbRequest, request: Request, registry: RegistryDep, settings: SettingsDep, engine: EngineDep
) -> Response:
    """Exact 1D log-likelihood log p(x) of the model's probability-flow ODE (≤ 10,000 finite points).

    Integrates the PF-ODE from σ_min up to σ_max with Runge–Kutta 4 (64 steps) and the exact
    derivative of the drift; the prior at σ_max is the sampler's N(data mean, σ_max²).
    """
    model = lookup_model(registry, body.model or settings.default_model, settings)
    label_request(request, model=model.name)
    return await _answer(engine, model, body.x)


@router.get(
    "/logprob", response_model=LogProbResponse, responses=ERRORS, summary="Log-density at a few points"
)
async def logprob_get(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    engine: EngineDep,
    x: Annotated[list[float], Query(description=f"Repeated: ?x=0.1&x=0.2 (1 to {MAX_GET_POINTS} points).")],
    model: Annotated[
        str | None, Query(max_length=200, description="Model name (default model if omitted).")
    ] = None,
) -> Response:
    """log p(x) for up to 100 points given as repeated `x` parameters; POST takes up to 10,000."""
    if not 1 <= len(x) <= MAX_GET_POINTS:
        raise unprocessable(
            f"give 1 to {MAX_GET_POINTS} x values (got {len(x)}); POST /logprob takes up to {MAX_POST_POINTS}"
        )
    bad = next((v for v in x if not math.isfinite(v)), None)
    if bad is not None:
        raise unprocessable(f"every x must be a finite number, got {bad}")
    found = lookup_model(registry, model or settings.default_model, settings)
    label_request(request, model=found.name)
    return await _answer(engine, found, x)
