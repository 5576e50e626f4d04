"""Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from ..metrics import render_latest
from .deps import Services, get_services

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
def metrics(services: Services = Depends(get_services)) -> Response:
    content, media_type = render_latest(services.metrics)
    return Response(content, media_type=media_type)
