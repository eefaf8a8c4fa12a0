"""The admin API under `/api/admin`: statistics, deletion with a report, orphan sweep, re-index, migrations
(status and apply).

Plain JSON, for operators and scripts; the same work is reachable from the CLI (`python -m app stats |
reindex | sweep | migrate`). With authentication on, every route needs the `admin` scope (app/api/auth.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app.api.delete import delete_uids
from app.core.lifecycle.maintenance import migration_status, reindex, statistics
from app.core.lifecycle.sweep import sweep
from app.deps import Context

ADMIN_PREFIX = "/api/admin"
router = APIRouter(tags=["Admin"])


@router.get("/statistics", summary="Counts of studies, series, instances; bytes held; files in storage")
async def get_statistics(context: Context) -> dict[str, int]:
    return (await statistics(context.repository, context.storage)).as_dict()


@router.get("/migrations", summary="Applied schema version and pending migration steps")
async def get_migrations(context: Context) -> dict[str, Any]:
    return await migration_status(context.repository)


@router.post(
    "/migrations/apply", summary="Apply pending migration steps (idempotent); answers the new status"
)
async def post_migrations_apply(context: Context) -> dict[str, Any]:
    # `open` applies whatever is pending; every step is idempotent, so a repeat or a race with another
    # instance of the archive does no harm.
    await context.repository.open()
    return await migration_status(context.repository)


@router.post("/sweep", summary="Remove files without metadata and metadata without files")
async def post_sweep(
    context: Context,
    grace_seconds: float = Query(60.0, ge=0, description="Leave files younger than this (stores in flight)."),
) -> dict[str, int]:
    report = await sweep(context.lifecycle, grace_seconds=grace_seconds)
    return {"orphan_files": report.orphan_files, "orphan_records": report.orphan_records}


@router.post("/reindex", summary="Rebuild the metadata from the files in storage")
async def post_reindex(context: Context) -> dict[str, Any]:
    report = await reindex(context.repository, context.storage, context.ingest)
    context.retrieve.invalidate()
    return report.as_dict()


@router.delete("/studies/{study}", summary="Delete a study; answers what was removed")
async def delete_study(study: str, context: Context) -> dict[str, int]:
    return await _delete(context, study)


@router.delete("/studies/{study}/series/{series}", summary="Delete a series; answers what was removed")
async def delete_series(study: str, series: str, context: Context) -> dict[str, int]:
    return await _delete(context, study, series)


@router.delete(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="Delete an instance; answers what was removed",
)
async def delete_instance(study: str, series: str, instance: str, context: Context) -> dict[str, int]:
    return await _delete(context, study, series, instance)


async def _delete(
    context: Context, study: str, series: str | None = None, instance: str | None = None
) -> dict[str, int]:
    report = await delete_uids(context, study, series, instance)
    return {"instances": report.count, "bytes": report.bytes, "files_not_removed": report.files_not_removed}
