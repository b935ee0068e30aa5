"""Operations: the root summary and Prometheus /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from ..state import SERVER_NAME, State, get_state

router = APIRouter()


@router.get("/", include_in_schema=False)
async def root(state: State = Depends(get_state)):
    model = state.repository.current
    return {"name": SERVER_NAME, "model_name": state.config.model_name,
            "model_version": model.version if model else None, "docs": "/docs"}


@router.get("/metrics", response_class=Response, tags=["monitoring"])
async def prometheus_metrics(state: State = Depends(get_state)):
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
