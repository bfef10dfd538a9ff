"""Request and response shapes of the HTTP API (pydantic models): what the OpenAPI document declares.

`ModelInfo.from_checkpoint` builds a model's public description from its checkpoint's typed metadata.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from ctm_core.checkpoint import Checkpoint
from ctm_core.likelihood import DensityName
from ctm_core.samplers import SPECS, NoiseMode, SamplerName


class ValidationErrorItem(BaseModel):
    """One invalid input: where it is, what is wrong with it, and pydantic's name for the error."""

    loc: list[str | int] = Field(
        description="Where: 'query', 'path' or 'body', then the parameter or field and any list index."
    )
    msg: str = Field(description="What is wrong, e.g. 'Input should be greater than or equal to 1'.")
    type: str = Field(description="The error's kind, e.g. 'greater_than_equal', 'json_invalid'.")


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx and 5xx), whatever raised it."""

    detail: str = Field(
        description="What went wrong and what to do about it, in one sentence; for invalid inputs, each "
        "parameter named with its error ('n: Input should be greater than or equal to 1; ...')."
    )
    errors: list[ValidationErrorItem] = Field(
        description="One item per invalid input when the request failed validation; empty otherwise."
    )


# The 422 answer has the same shape as every other error (the name stays for the routes' `responses=`).
ValidationErrorResponse = ErrorResponse


class SampleResponse(BaseModel):
    """Samples from one model with one sampler; the seed reproduces them."""

    model: str
    model_sha256: str = Field(
        description="The version that drew these samples: sha256 of its checkpoint file (as in /models)."
    )
    sampler: SamplerName
    steps: int = Field(ge=1)
    nfe: int = Field(ge=1, description="Network evaluations per sample.")
    n: int = Field(ge=1)
    seed: int = Field(ge=0, description="The seed given, or the one drawn; pass it back to reproduce.")
    noise: NoiseMode
    samples: list[float] = Field(description="n samples.")


class TrajectoryResponse(SampleResponse):
    """Samples plus every intermediate state of the sampler."""

    sigmas: list[float] = Field(
        description="The steps + 1 noise levels the sampler visited, from σ_max down to σ_min: the "
        "model's schedule, or the `sigmas` given."
    )
    paths: list[list[float]] = Field(
        description="n lists of steps + 1 states, one per sigma; the last equals the sample."
    )


class NoiseInfo(BaseModel):
    """The diffusion's time range and schedule the model was trained with."""

    sigma_min: float
    sigma_max: float
    sigma_data: float
    rho: float
    schedule: str = Field(description="The ODE solvers' (euler, heun) schedule from σ_max to σ_min.")
    jump_schedule: str = Field(description="The CTM jump samplers' (multistep, gamma) schedule.")
    prior_std: float = Field(description="Std of the prior N(data mean, σ_max² + σ_d²) of the latent x_T.")


class ModelInfo(BaseModel):
    """A loaded model: what it generates, how it was built and trained, and which file it came from."""

    name: str = Field(description="The checkpoint file's stem.")
    description: str = Field(description="The task or data the model generates.")
    task: dict[str, Any]
    architecture: dict[str, Any]
    noise: NoiseInfo
    training: dict[str, Any]
    metrics: dict[str, Any] = Field(description="Quality metrics recorded in the checkpoint.")
    samplers: list[SamplerName]
    default_steps: dict[SamplerName, int] = Field(
        description="The steps each sampler takes when a request gives neither `steps` nor `sigmas`."
    )
    has_teacher: bool
    file_name: str
    size_bytes: int
    sha256: str
    created_at: str | None
    format_version: int
    package_version: str | None

    @classmethod
    def from_checkpoint(cls, name: str, checkpoint: Checkpoint) -> "ModelInfo":
        """The public description of a loaded checkpoint, from its metadata and its file.

        `architecture` and `training` show the network and noise range the metadata holds once, and
        a data task its run's holdout fraction; free-form objects list their keys sorted, as the
        checkpoint's JSON has them."""
        meta, noise = checkpoint.metadata, checkpoint.noise
        assert noise.sigma_data is not None  # CheckpointMetadata requires it
        network = meta.network.model_dump(mode="json")
        task = meta.task.model_dump(mode="json")
        training: dict[str, Any] = {}
        if meta.training is not None:
            training = {
                **meta.training.model_dump(mode="json"),
                "network": network,
                "noise": noise.model_dump(mode="json"),
            }
            if meta.task.kind == "data":
                task["holdout"] = meta.training.holdout
        return cls(
            name=name,
            description=meta.task.description or meta.task.name,
            task=_sorted(task),
            architecture={"network": _sorted(network), "sigma_data": noise.sigma_data},
            noise=NoiseInfo(
                sigma_min=noise.sigma_min,
                sigma_max=noise.sigma_max,
                sigma_data=noise.sigma_data,
                rho=noise.rho,
                schedule=noise.schedule,
                jump_schedule=noise.jump_schedule,
                prior_std=noise.prior_std,
            ),
            training=_sorted(training),
            metrics=_sorted(meta.metrics.model_dump(mode="json")),
            samplers=list(SPECS),
            default_steps={sampler: spec.default_steps for sampler, spec in SPECS.items()},
            has_teacher=checkpoint.teacher is not None,
            file_name=checkpoint.path.name,
            size_bytes=checkpoint.size_bytes,
            sha256=checkpoint.sha256,
            created_at=meta.created_at,
            format_version=checkpoint.format_version,
            package_version=meta.package_version,
        )


def _sorted(value: Any) -> Any:
    """`value` with the keys of every object in it sorted."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


class RejectedCheckpoint(BaseModel):
    """A checkpoint file that failed validation at the last (re)load."""

    file_name: str
    reason: str = Field(description="Why it was refused.")
    serving_sha256: str | None = Field(
        description="sha256 of the file's previous version, which keeps serving; null: none serves."
    )


class ModelList(BaseModel):
    models: list[ModelInfo]
    default_model: str | None = Field(
        description="The model of requests that name none: CTM_DEFAULT_MODEL, or the only loaded model "
        "when that did not load; null when neither."
    )
    rejected: list[RejectedCheckpoint] = Field(
        description="Checkpoint files that failed validation (the server log has the same lines)."
    )


class ReloadResponse(BaseModel):
    """What POST /admin/reload changed; every name in `models` now serves the version given."""

    models: dict[str, str] = Field(description="Model name → sha256 of the version serving now.")
    added: list[str]
    replaced: list[str]
    removed: list[str]
    unchanged: list[str]
    rejected: list[RejectedCheckpoint]
    seconds: float = Field(description="Time the reload took.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]


class NotReadyResponse(BaseModel):
    """/readyz's 503: the probe's status, and the common error shape (`ErrorResponse`)."""

    status: Literal["not ready"] = "not ready"
    models: list[str]
    detail: str
    errors: list[ValidationErrorItem] = Field(default_factory=list, description="Always empty.")


class DensityResponse(BaseModel):
    """A model's reference density on an even grid of x, from lo to hi."""

    model: str
    source: Literal["exact", "kde"] = Field(
        description="exact: the built-in task's density; kde: a Gaussian KDE of the training values "
        "stored in the checkpoint (`task.kde_points`), an estimate."
    )
    label: str = Field(
        description="What the density is, for legends: 'true density' or "
        "'KDE of the training data (Scott's rule)'."
    )
    x: list[float] = Field(description="`points` evenly spaced values from lo to hi.")
    density: list[float] = Field(description="The density at each x.")


class EvaluateResponse(BaseModel):
    """How far one sampling run (the samples /sample gives for the same parameters) is from the reference."""

    model: str
    sampler: SamplerName
    steps: int = Field(ge=1)
    nfe: int = Field(ge=1, description="Network evaluations per sample.")
    n: int = Field(ge=1)
    seed: int = Field(ge=0, description="The seed given, or the one drawn; pass it back to reproduce.")
    noise: NoiseMode
    reference: Literal["exact", "kde"] | None = Field(
        description="What the samples are measured against (see /models/{name}/density); null: nothing."
    )
    w1: float | None = Field(
        description="Wasserstein-1 distance to the task's exact CDF, or the two-sample W1 to the stored "
        "training values; null without a reference or when a sample is not finite."
    )


# Most points in one POST /logprob body.
MAX_POST_POINTS = 10_000
SAMPLER_DESCRIPTION = (
    "Which density: onestep (default), the law of the one-step sampler's samples by the change of "
    "variables through its map G(·, σ_max, σ_min); ode, the law of the probability-flow ODE of the "
    "model's denoiser (RK4, 64 steps), what many-step PF-ODE sampling converges to."
)


class LogProbRequest(BaseModel):
    """Points at which to evaluate log p; `model` defaults to the server's default model."""

    model: str | None = Field(None, max_length=200)
    x: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1, max_length=MAX_POST_POINTS)
    sampler: DensityName = Field("onestep", description=SAMPLER_DESCRIPTION)


class LogProbResponse(BaseModel):
    """log p(x) under the model, in nats, one per point (same order as `x`)."""

    model: str
    model_sha256: str
    density: DensityName = Field(
        description="The density evaluated: onestep (the one-step sampler's law) or ode (the PF-ODE's)."
    )
    x: list[float]
    logprob: list[float | None] = Field(
        description="null where log p is not a finite number: density 0 (onestep: x outside the range "
        "of the one-step map), or x beyond float32's range (|x| > 3.4e38)."
    )
