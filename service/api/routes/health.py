"""GET /healthz (the process is up) and GET /readyz (at least one model is loaded)."""

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from service.api.deps import RegistryDep
from service.schemas import HealthResponse, NotReadyResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> HealthResponse:
    """200 while the process runs."""
    return HealthResponse()


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=ReadyResponse,
    responses={
        status.HTTP_503_SERVICE_UNAVAILABLE: {"model": NotReadyResponse, "description": "No model loaded."}
    },
)
async def readyz(registry: RegistryDep) -> ReadyResponse | JSONResponse:
    """200 with the loaded models' names, or 503 while none is loaded."""
    if len(registry):
        return ReadyResponse(models=registry.names)
    rejected = len(registry.rejected)
    body = NotReadyResponse(
        models=[],
        detail=f"no model is loaded: {rejected} checkpoint file(s) failed validation (see the server log)"
        if rejected
        else "no model is loaded: no *.safetensors file in the checkpoint directory (CTM_CHECKPOINT_DIR)",
    )
    return JSONResponse(body.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
