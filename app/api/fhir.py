"""`GET /api/fhir/status`: whether FHIR ImagingStudy sync is on, how many studies wait in its outbox, how many
fail (with the last error), and how many were synced since start-up."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import Context

FHIR_PREFIX = "/api/fhir"
router = APIRouter(tags=["FHIR"])


@router.get("/status", summary="FHIR ImagingStudy sync: outbox and last error")
async def get_fhir_status(context: Context) -> dict[str, Any]:
    if context.fhir is None:
        return {"enabled": False}
    return await context.fhir.status()
