"""The service's life: request time limits, hot reload of the checkpoints, and a clean stop on SIGTERM.

- `RequestTimeoutMiddleware` answers 503 when a request has not begun its response within
  CTM_REQUEST_TIMEOUT_S. Cancelling the handler cancels its sampling job if the job still waits
  in the pool's queue; a job already running stops at its next network evaluation once every
  request of its batch is gone (`service.inference.Stoppable`), so the CPU is free again within
  one sampler step (PyTorch ops themselves cannot be interrupted).
- `reload_models` brings the registry in line with the checkpoint directory (POST /admin/reload,
  and every CTM_RELOAD_POLL_S seconds when that is set: `checkpoint_poller`).
- `exit_zero_after_sigterm` makes the graceful stop that uvicorn performs on SIGTERM (in-flight
  requests finish, then the lifespan ends) exit with status 0.
"""

import asyncio
import contextlib
import json
import logging
import math
import signal
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import BODY_MODELS
from service.api.responses import error_response
from service.registry import ModelRegistry, ReloadReport
from service.schemas import ErrorResponse
from service.security import PUBLIC_PATHS, document_access
from service.telemetry import Telemetry

logger = logging.getLogger(__name__)

ADMIN_PATHS = frozenset({"/admin/reload"})
# Probes must answer at once, and a reload that outlives the limit would still have happened.
NO_TIMEOUT_PATHS = PUBLIC_PATHS | ADMIN_PATHS
TIMEOUT_RESPONSE: dict[str, Any] = {
    "description": "The request took longer than the server's limit (CTM_REQUEST_TIMEOUT_S); retry later.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


class RequestTimeoutMiddleware:
    """ASGI middleware: 503 with a `detail` for a request not answering within `seconds` (0: no limit)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.seconds or scope["path"] in NO_TIMEOUT_PATHS:
            await self.app(scope, receive, send)
            return
        started = False
        with anyio.CancelScope(deadline=anyio.current_time() + self.seconds) as limit:

            async def send_until_started(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    limit.deadline = math.inf  # the answer is ready: let it be sent whole
                await send(message)

            await self.app(scope, receive, send_until_started)
        if not limit.cancelled_caught:
            return
        if started:  # cannot happen once the deadline is lifted, but never send two responses
            logger.warning("request timed out while responding path=%s", scope["path"])
            return
        logger.warning("request timed out path=%s limit_s=%g", scope["path"], self.seconds)
        detail = (
            f"the request did not finish within {self.seconds:g} s (CTM_REQUEST_TIMEOUT_S); "
            "ask for fewer samples or steps, or retry later"
        )
        response = error_response(503, detail, headers={"Retry-After": "1"})
        await response(scope, receive, send)


async def reload_models(app: FastAPI, trigger: str) -> ReloadReport:
    """Reload the checkpoint directory off the event loop; update the gauges; log what changed."""
    registry: ModelRegistry = app.state.registry
    telemetry: Telemetry = app.state.telemetry
    directory = app.state.settings.checkpoint_dir
    report = await anyio.to_thread.run_sync(registry.reload, directory, app.state.engine.device)
    telemetry.models_loaded.set(len(report.snapshot.models))
    telemetry.checkpoints_rejected.set(len(report.rejected))
    if report.changed or trigger != "poll":
        logger.info(
            "models reloaded trigger=%s added=%s replaced=%s removed=%s unchanged=%d rejected=%d "
            "seconds=%.3f",
            trigger,
            ",".join(report.added) or "-",
            ",".join(report.replaced) or "-",
            ",".join(report.removed) or "-",
            len(report.unchanged),
            len(report.rejected),
            report.seconds,
        )
    return report


async def _poll(app: FastAPI, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await reload_models(app, trigger="poll")
        except Exception:  # keep polling: the next look may succeed
            logger.exception("checkpoint poll failed")


@contextlib.asynccontextmanager
async def checkpoint_poller(app: FastAPI) -> AsyncIterator[None]:
    """While open, reload the checkpoints every CTM_RELOAD_POLL_S seconds (nothing when it is 0)."""
    interval = app.state.settings.reload_poll_s
    if not interval:
        yield
        return
    logger.info("checkpoint poller started interval_s=%g", interval)
    async with in_background(_poll(app, interval), name="ctm-checkpoint-poller"):
        yield


@contextlib.asynccontextmanager
async def in_background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """While open, run `work` as a task; cancel it and wait for it on the way out."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def document_responses(app: FastAPI) -> None:
    """Add what the framework and the middlewares answer to the OpenAPI document.

    503 on timeout, 401 without the API key,
    the schemas of bodies that routes read themselves (`service.api.deps.body_openapi`), and every
    422 as the common `ErrorResponse` (FastAPI declares its own list-shaped HTTPValidationError where
    a route declares none; `service.app.invalid_request` answers the common shape).
    """
    settings = app.state.settings
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorResponse, *BODY_MODELS.values()):
            _add_schema(schemas, model)
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                responses = operation["responses"]
                if settings.request_timeout_s and path not in NO_TIMEOUT_PATHS:
                    responses.setdefault("503", TIMEOUT_RESPONSE)
                if _refers_to(responses.get("422"), _FASTAPI_422):
                    responses["422"] = VALIDATION_RESPONSE
        if not _refers_to(schema["paths"], _FASTAPI_422):
            schemas.pop(_FASTAPI_422, None)
            schemas.pop("ValidationError", None)  # only HTTPValidationError refers to it
        document_access(schema, settings, ADMIN_PATHS)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_FASTAPI_422 = "HTTPValidationError"
VALIDATION_RESPONSE: dict[str, Any] = {
    "description": "A parameter or the body is not valid; `errors` lists each invalid input.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    """`model`'s JSON schema, and the models it nests, as components (unless already there)."""
    found = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, nested in found.pop("$defs", {}).items():
        schemas.setdefault(name, nested)
    schemas.setdefault(model.__name__, found)


def _refers_to(document: Any, component: str) -> bool:
    """Whether `document` holds a `$ref` to the schema component `component`."""
    return f'"#/components/schemas/{component}"' in json.dumps(document)


@contextlib.contextmanager
def exit_zero_after_sigterm() -> Iterator[None]:
    """Let a graceful stop on SIGTERM exit 0.

    uvicorn catches SIGTERM, lets in-flight requests finish, runs the lifespan's shutdown, then
    raises the signal again for the handler it found; with the default handler that kills the
    process (status -15) after the clean stop. This installs a handler that does nothing instead.
    """
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
