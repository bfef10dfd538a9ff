"""Shared dependencies: the app's registry, engine and telemetry, model lookup, and query validation.

Per-parameter ranges are `Query` bounds (so OpenAPI shows them, and FastAPI answers 422 with its
list of errors); the request limits come from the settings, so the sampling dependencies are built
per app. Rules between parameters answer 422 with one message naming the rule or limit.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, create_model

from ctm_core.config import MAX_SEED
from ctm_core.samplers import DEFAULT_GAMMA, SPECS, NoiseMode, SamplerName
from ctm_core.sampling import SampleRequest, sample_request
from service.config import Settings
from service.inference import InferenceEngine, SamplingJob
from service.limits import check_work
from service.registry import LoadedModel, ModelRegistry
from service.telemetry import Telemetry, label_request

_NAME_ECHO_LIMIT = 80
# Bodies above this size are parsed in a worker thread: parsing 250 kB of JSON numbers takes ~5 ms.
_OFFLOAD_BODY_BYTES = 32_768
Body = TypeVar("Body", bound=BaseModel)


# Dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in its
# thread pool, a thread hop each (docs/PERFORMANCE.md).
async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_engine(request: Request) -> InferenceEngine:
    return request.app.state.engine


async def get_telemetry(request: Request) -> Telemetry:
    return request.app.state.telemetry


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def lookup_model(registry: ModelRegistry, name: str | None, settings: Settings) -> LoadedModel:
    """The loaded model called `name` (None: the default model, `ModelRegistry.default_name`), or 404
    listing the loaded ones."""
    name = registry.default_name(settings.default_model) if name is None else name
    model = registry.get(name)
    if model is not None:
        return model
    shown = name if len(name) <= _NAME_ECHO_LIMIT else name[:_NAME_ECHO_LIMIT] + "…"
    loaded = ", ".join(registry.names) or "none"
    hint = ""
    if name == settings.default_model:
        hint = " (the server's default model, CTM_DEFAULT_MODEL, did not load)"
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown model {shown!r}{hint}; loaded models: {loaded}")


def _query_names(dependant: Any) -> frozenset[str]:
    """The query parameters a route's dependant takes, its dependencies' included."""
    found = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        found |= _query_names(sub)
    return frozenset(found)


def _declared_query_names(route: Any) -> frozenset[str]:
    """The query parameters a route declares in its `openapi_extra` (a `SamplingQuery`'s)."""
    extra = getattr(route, "openapi_extra", None) or {}
    return frozenset(p["name"] for p in extra.get("parameters", ()) if p.get("in") == "query")


async def refuse_unknown_query(request: Request) -> None:
    """422 naming the query parameters the route does not take: a misspelt `step=8` would otherwise
    be dropped without a word and the answer silently use the default."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    if getattr(route, "dependant", None) is None:
        return
    # A few µs: two levels of dependencies.
    refuse_unknown(request, _query_names(route.dependant) | _declared_query_names(route))


def refuse_unknown(request: Request, names: frozenset[str]) -> None:
    """422 naming the query parameters of `request` that are not in `names`."""
    unknown = sorted(set(request.query_params) - names)
    if unknown:
        shown = ", ".join(repr(name[:_NAME_ECHO_LIMIT]) for name in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        known = ", ".join(sorted(names)) or "none"
        raise unprocessable(f"unknown query parameter {shown}{more}; this endpoint takes: {known}")


def unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


# Models of the bodies that routes read with `json_body`, by name: `body_openapi` declares them and
# `service.lifecycle.document_responses` adds them to the OpenAPI document's schemas.
BODY_MODELS: dict[str, type[BaseModel]] = {}


def body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra` declaring a required JSON body of `model`, for routes that read
    it with `json_body` rather than as a parameter."""
    BODY_MODELS[model.__name__] = model
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def json_body(request: Request, model: type[Body]) -> Body:
    """The request's JSON body validated as `model`, parsed off the event loop when it is large.

    Read whole first (its size bounded by CTM_MAX_BODY_BYTES, `service.limits`), then parsed and
    validated in one pass by pydantic-core; errors answer 422 in FastAPI's shape, under "body".
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise unprocessable(
            f"the body must be JSON, sent with 'Content-Type: application/json' (got {content_type!r})"
        )
    body = await request.body()
    try:
        if len(body) < _OFFLOAD_BODY_BYTES:
            return model.model_validate_json(body)
        return await anyio.to_thread.run_sync(model.model_validate_json, body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        for error in errors:
            if error["type"] == "json_invalid":
                del error["input"]  # the whole body, possibly not even text: not worth echoing
        raise RequestValidationError(errors) from None


def parse_sigmas(values: list[str]) -> list[float]:
    """The numbers of a `sigmas` query: repeated values, each possibly comma-separated; 422 for a
    value that is not a number (the levels' rules are `ctm_core.samplers.explicit_sigmas`')."""
    levels = []
    for value in values:
        for part in value.split(","):
            text = part.strip()
            try:
                levels.append(float(text))
            except ValueError:
                shown = text if len(text) <= _NAME_ECHO_LIMIT else text[:_NAME_ECHO_LIMIT] + "…"
                what = f"got {shown!r}" if text else "got an empty value"
                raise unprocessable(
                    f"every sigma must be a number, {what}; give the levels as "
                    "?sigmas=10&sigmas=1&sigmas=0.002 or ?sigmas=10,1,0.002"
                ) from None
    return levels


class SamplingQuery:
    """The query of a sampling route (/sample, /trajectory, /evaluate, /plot.png) as a `SamplingJob`.

    One pydantic model holds the parameters, their bounds (this app's limits) and their
    descriptions; `parse` validates a request's query with it in one pydantic-core call, and
    `parameters` declares the same fields in the OpenAPI document. Routes call `job` themselves
    rather than declaring a FastAPI parameter per field: FastAPI's per-parameter parsing cost about
    0.19 ms a request, two thirds of a one-sample request (docs/PERFORMANCE.md).

    Steps default to the sampler's own (`ctm_core.samplers.SPECS`); a parameter the chosen sampler
    would ignore (`gamma` but for γ-sampling, `steps` beside `sigmas`) is refused. `with_sigmas`:
    it also takes the explicit noise levels `sigmas`. `trajectory`: the answer holds every level's
    states, so n × levels is limited (CTM_MAX_TRAJECTORY_VALUES), and the sampler defaults to
    multistep, so that a plain request answers a path with intermediate states.
    """

    def __init__(self, settings: Settings, *, with_sigmas: bool = False, trajectory: bool = False) -> None:
        self.settings = settings
        self.max_levels = settings.max_steps + 1
        self.trajectory_limit = settings.max_trajectory_values if trajectory else None
        defaults = ", ".join(f"{name} {spec.default_steps}" for name, spec in SPECS.items())
        fields: dict[str, Any] = {
            "model": (
                str | None,
                Field(
                    None,
                    description="A loaded model's name (see /models); omitted: the default model "
                    "/models names.",
                ),
            ),
            "sampler": (
                SamplerName,
                Field(
                    "multistep" if trajectory else "onestep",
                    description="CTM jumps (onestep, multistep, gamma) or PF-ODE solvers (euler, heun).",
                ),
            ),
            "steps": (
                int | None,
                Field(
                    None,
                    ge=1,
                    le=settings.max_steps,
                    description="Sampler steps on the model's schedule; omitted: the sampler's default "
                    f"({defaults}). onestep takes exactly 1.",
                ),
            ),
            "n": (
                int,
                Field(min(1000, settings.max_n), ge=1, le=settings.max_n, description="Number of samples."),
            ),
            "seed": (
                int | None,
                Field(
                    None, ge=0, le=MAX_SEED, description="Seed of every random draw; omitted: one is drawn."
                ),
            ),
            "gamma": (
                float | None,
                Field(
                    None,
                    ge=0,
                    le=1,
                    allow_inf_nan=False,
                    description=f"γ of the gamma sampler (default {DEFAULT_GAMMA}); refused with "
                    "another sampler.",
                ),
            ),
            "noise": (
                NoiseMode,
                Field(
                    "random",
                    description="Latent x_T: random from the prior N(μ, std²), or its n quantiles "
                    "μ + std·Φ⁻¹((i + ½)/n).",
                ),
            ),
        }
        if with_sigmas:
            fields["sigmas"] = (
                list[str] | None,
                Field(
                    None,
                    description="Explicit noise levels instead of `steps` and the schedule: repeated "
                    "(?sigmas=10&sigmas=1&sigmas=0.002) or comma-separated (?sigmas=10,1,0.002). Strictly "
                    "decreasing from the model's σ_max to its σ_min (see /models), 2 to "
                    f"{self.max_levels} levels (CTM_MAX_STEPS + 1); steps = levels − 1, and onestep takes "
                    "exactly 2.",
                ),
            )
        self.model = create_model("SamplingQuery", **fields)
        self.names = frozenset(fields)

    def dependency(self, known: frozenset[str] = frozenset()) -> Callable[[Request], Awaitable[SamplingJob]]:
        """`job` as a FastAPI dependency, for routes whose other parameters FastAPI parses
        (`known`: their query names); declare `parameters()` as the route's `openapi_extra`."""

        async def sampling_job(request: Request) -> SamplingJob:
            return self.job(request, known=known)

        return sampling_job

    def parameters(self) -> dict[str, Any]:
        """A route's `openapi_extra` declaring these query parameters (FastAPI adds its own to them)."""
        schema = self.model.model_json_schema()
        parameters = []
        for name, field in schema["properties"].items():
            # As FastAPI declares a parameter: its description beside and inside its schema.
            parameter = {"name": name, "in": "query", "required": False, "schema": field}
            parameters.append(parameter | {"description": field["description"]})
        return {"parameters": parameters}

    def parse(self, request: Request) -> dict[str, Any]:
        """The query validated, by field name (422 in FastAPI's shape, under "query", for a bad
        value); a name given twice takes its last value, as FastAPI does, but for `sigmas`, which
        collects them all."""
        query = request.query_params
        values: dict[str, Any] = dict(query)
        if "sigmas" in values and "sigmas" in self.names:
            values["sigmas"] = query.getlist("sigmas")
        try:
            return dict(vars(self.model.model_validate(values)))
        except ValidationError as exc:
            errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from None

    def job(self, request: Request, *, known: frozenset[str] = frozenset()) -> SamplingJob:
        """The request's checked job; 422 for an unknown query name (but `known`, a route's other
        parameters), a bad value, or a broken rule or limit; 404 for an unknown model."""
        refuse_unknown(request, self.names | known)
        query = self.parse(request)
        settings = self.settings
        loaded = lookup_model(request.app.state.registry, query.pop("model"), settings)
        label_request(request, model=loaded.name, sampler=query["sampler"])
        sigmas = query.pop("sigmas", None)
        try:
            checked = sample_request(
                loaded.checkpoint.noise,
                **query,
                sigmas=None if sigmas is None else parse_sigmas(sigmas),
                max_steps=settings.max_steps,
                max_levels=self.max_levels,
            )
        except ValueError as exc:
            raise unprocessable(str(exc)) from None
        check_work(
            checked.n,
            SPECS[checked.sampler].nfe(checked.steps),
            settings.max_work,
            rows_name="n",
            evaluations_name="NFE",
            instead="ask for fewer steps (a CTM jump sampler needs one evaluation a step)",
        )
        if self.trajectory_limit is not None:
            self._check_trajectory_size(checked)
        return SamplingJob(model=loaded, **vars(checked))

    def _check_trajectory_size(self, job: SampleRequest) -> None:
        """422 when the answer's n × levels exceeds CTM_MAX_TRAJECTORY_VALUES; the levels are
        steps + 1, or the number of explicit `sigmas`."""
        levels = job.steps + 1 if job.sigmas is None else len(job.sigmas)
        values = job.n * levels
        if values > (limit := self.trajectory_limit or 0):
            lower = "n or steps" if job.sigmas is None else "n or the number of sigmas"
            raise unprocessable(
                f"a trajectory of n × (steps + 1) = {job.n} × {levels} = {values} values exceeds "
                f"the limit of {limit} values (CTM_MAX_TRAJECTORY_VALUES); lower {lower}"
            )


NoUnknownQuery = Depends(refuse_unknown_query)
