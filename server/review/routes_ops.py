"""Operations: GET /metrics (the review metrics, Prometheus), GET /healthz (the store answers) and
GET /favicon.ico (browsers ask for it at the root whatever the page links), no sign-in.

/healthz says neither where the store lives nor why it failed (it answers anyone): the cause is logged.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from probewatch.server.review.state import HERE, State

router = APIRouter()
log = logging.getLogger(__name__)


@router.get("/metrics")
def metrics(state: State):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz(state: State):
    try:
        state.store.count()
    except Exception as exc:  # noqa: BLE001 - reported as unhealthy
        log.warning("review: /healthz: the incident store does not answer: %s", exc)
        return JSONResponse({"status": "error", "store": "unavailable"}, status_code=503)
    return {"status": "ok", "backend": state.store.backend}


@router.get("/favicon.ico", include_in_schema=False)
def favicon():
    """The SVG icon the pages link (static/favicon.svg); modern browsers take SVG under any name."""
    return FileResponse(
        HERE / "static" / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
    )
