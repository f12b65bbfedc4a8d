"""Operations: GET /metrics (the review metrics, Prometheus) and GET /healthz (the store answers), no sign-in."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from probewatch.server.review.state import State

router = APIRouter()


@router.get("/metrics")
def metrics(state: State):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz(state: State):
    try:
        state.store.count()
    except Exception as exc:  # noqa: BLE001 - reported as unhealthy
        return JSONResponse({"status": "error", "store": str(exc)}, status_code=503)
    return {"status": "ok", "store": str(state.store.path), "backend": state.store.backend}
