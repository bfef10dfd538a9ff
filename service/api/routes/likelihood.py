"""POST /logprob and GET /logprob: the served model's exact log-density at given points.

Two densities, by `sampler`:
- onestep (the default): the law of the one-step sampler's samples y = G(z, σ_max, σ_min), z from
  the prior, by the change of variables log p(y) = log p_prior(z) − log ∂G/∂z at z = G⁻¹(y)
  (`ctm_core.likelihood.onestep_log_prob`), i.e. of what /sample?sampler=onestep draws.
- ode: the law of the model's probability-flow ODE, whose drift is the student's denoiser
  g(x, t, t), integrated from σ_min to σ_max (`ctm_core.likelihood.log_prob`): what the PF-ODE
  solvers converge to with many steps.
"""

import math
import threading
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Query, Request, Response, status

from ctm_core.likelihood import (
    ODE_STEPS,
    DensityName,
    density_log_prob,
    has_onestep_density,
    ode_evaluations,
    onestep_evaluations,
)
from service.api.deps import (
    EngineDep,
    NoUnknownQuery,
    RegistryDep,
    SettingsDep,
    body_openapi,
    json_body,
    lookup_model,
    unprocessable,
)
from service.api.responses import json_response
from service.config import Settings
from service.inference import Stoppable
from service.limits import check_work
from service.registry import LoadedModel
from service.schemas import (
    MAX_POST_POINTS,
    SAMPLER_DESCRIPTION,
    ErrorResponse,
    LogProbRequest,
    LogProbResponse,
    ValidationErrorResponse,
)
from service.telemetry import label_request

MAX_GET_POINTS = 100
ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "Unknown model."},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {
        "model": ValidationErrorResponse,
        "description": "No points, too many points, a point that is not a finite number, an unknown "
        "sampler, or onestep for a model whose one-step map is not monotone.",
    },
}


def model_log_prob(
    model: LoadedModel, x: list[float], density: DensityName = "ode", stop: Callable[[], bool] = bool
) -> np.ndarray:
    """log p(x) of the served model (see ctm_core.likelihood): density "onestep", the one-step
    sampler's law by the change of variables through G(·, σ_max, σ_min); "ode", the PF-ODE's law
    of the model's denoiser g(x, t, t). Raises `Stopped` at the first evaluation after `stop()`."""
    network = model.network
    points = torch.tensor(x, dtype=torch.float32, device=next(network.parameters()).device)
    evaluator = Stoppable(network, stop)
    return density_log_prob(network, points, model.checkpoint.noise, density, evaluator).cpu().numpy()


def check_density_work(points: int, density: DensityName, settings: Settings) -> None:
    """422 when the points' network evaluations exceed CTM_MAX_WORK (`service.limits`)."""
    per_point = onestep_evaluations() if density == "onestep" else ode_evaluations(ODE_STEPS)
    check_work(
        points,
        per_point,
        settings.max_work,
        rows_name="points",
        evaluations_name="evaluations",
        instead="use sampler=onestep",
    )


def check_density(model: LoadedModel, density: DensityName) -> None:
    """422 when the onestep density is asked of a model whose one-step map is not monotone: the
    change of variables needs G non-decreasing in x (`MonotoneNetwork`)."""
    if density == "onestep" and not has_onestep_density(model.network):
        raise unprocessable(
            f"model {model.name!r} has no onestep density: its network is not monotone in x, so its "
            "one-step map cannot be inverted; use sampler=ode for the PF-ODE density"
        )


async def _answer(
    engine: Any, model: LoadedModel, x: list[float], density: DensityName, settings: Settings
) -> Response:
    check_density(model, density)
    check_density_work(len(x), density, settings)
    gone = threading.Event()
    try:
        logprob = await engine.call(model_log_prob, model, x, density, gone.is_set)
    finally:
        gone.set()  # answered, or timed out: an evaluation still running stops at its next step
    payload = {
        "model": model.name,
        "model_sha256": model.sha256,
        "density": density,
        "x": np.asarray(x),
        "logprob": logprob,
    }
    return await json_response(payload, values=2 * len(x))


router = APIRouter(tags=["likelihood"], dependencies=[NoUnknownQuery])


@router.post(
    "/logprob",
    response_model=LogProbResponse,
    responses=ERRORS,
    summary="Log-density at points",
    openapi_extra=body_openapi(LogProbRequest),  # read by `json_body`, off the event loop
)
async def logprob_post(
    request: Request, registry: RegistryDep, settings: SettingsDep, engine: EngineDep
) -> Response:
    """Exact 1D log-likelihood log p(x) of the model at ≤ 10,000 finite points; `sampler` picks which.

    onestep (default): the density of the one-step sampler's samples y = G(z, σ_max, σ_min), z from
    the prior N(data mean, σ_max² + σ_d²): log p(y) = log p_prior(z) − log ∂G/∂z at z = G⁻¹(y),
    G inverted by bisection and differentiated exactly (−inf, shown as null, outside G's range).

    ode: the density of the model's probability-flow ODE, integrated from σ_min up to σ_max with
    Runge–Kutta 4 (64 steps) and the exact derivative of the drift, with the same prior at σ_max.
    """
    body = await json_body(request, LogProbRequest)
    model = lookup_model(registry, body.model, settings)
    label_request(request, model=model.name, sampler=body.sampler)
    return await _answer(engine, model, body.x, body.sampler, settings)


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
    sampler: Annotated[DensityName, Query(description=SAMPLER_DESCRIPTION)] = "onestep",
) -> Response:
    """log p(x) for up to 100 points given as repeated `x` parameters; POST takes up to 10,000.

    `sampler`: onestep (default), the one-step sampler's density; ode, the PF-ODE's (see POST).
    """
    if not 1 <= len(x) <= MAX_GET_POINTS:
        raise unprocessable(
            f"give 1 to {MAX_GET_POINTS} x values (got {len(x)}); POST /logprob takes up to {MAX_POST_POINTS}"
        )
    bad = next((v for v in x if not math.isfinite(v)), None)
    if bad is not None:
        raise unprocessable(f"every x must be a finite number, got {bad}")
    found = lookup_model(registry, model, settings)
    label_request(request, model=found.name, sampler=sampler)
    return await _answer(engine, found, x, sampler, settings)
