"""GET /metrics: Prometheus text format."""

from fastapi import APIRouter, Response

from service.api.deps import TelemetryDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics."}},
)
async def metrics(telemetry: TelemetryDep) -> Response:
    """Requests and latency by endpoint, model and sampler; samples generated; models loaded."""
    return Response(telemetry.render(), media_type=telemetry.content_type)
