"""The change feed under `/api/changes` (like Orthanc's /changes and Microsoft's DICOM change feed).

`GET /api/changes?since=SEQ&limit=N` answers the entries after SEQ in order, each
`{"seq", "type", "at", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}` with `type` one of
instance.created, instance.updated, instance.deleted, study.completed; and `last` (the highest seq the answer
holds, or `since` when it holds none) and `done` (no later entry exists yet), so a client polls with
`since=last` until done. `study=UID` keeps that study's entries only (its history); `tail=N` starts N
sequence numbers before the newest, instead of at `since` (the console's view of what happened last).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Query

from app.api.errors import check_uids
from app.deps import Context

CHANGES_PREFIX = "/api"
MAX_LIMIT = 10000
FLUSH_SECONDS = 5.0
router = APIRouter(tags=["Changes"])


@router.get("/changes", summary="Ordered feed of instance changes and completed studies")
async def get_changes(
    context: Context,
    # Bounded to a 64-bit integer: a larger one cannot be compared in the store (it was a 500, tests/system/test_schema.py).
    since: int = Query(0, ge=0, le=2**63 - 1, description="Answer entries after this sequence number."),
    limit: int = Query(100, ge=1, le=MAX_LIMIT, description="At most this many entries."),
    study: str | None = Query(None, description="Only the entries of this Study Instance UID."),
    tail: int | None = Query(
        None, ge=1, le=MAX_LIMIT, description="Start this many sequence numbers before the newest (not at since)."
    ),
) -> dict[str, Any]:
    if study is not None:
        check_uids(study)
    if context.change_feed is not None:
        # Entries still queued for writing are part of the feed already: make them visible (bounded, so a
        # metadata store that is down delays the answer, never hangs it).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(context.change_feed.flush(), FLUSH_SECONDS)
    if tail is not None:
        since = max(0, await context.repository.last_change_seq() - tail)
    changes = await context.repository.changes(since, limit + 1, study)
    page = changes[:limit]
    return {
        "changes": [change.to_json() for change in page],
        "last": page[-1].seq if page else since,
        "done": len(changes) <= limit,
    }


# Webhook URLs may carry credentials: their status is for administrators (app/main.py mounts this router so).
admin_router = APIRouter(tags=["Changes"])


@admin_router.get("/webhooks/status", summary="Webhook delivery: each URL's position in the change feed")
async def get_webhook_status(context: Context) -> dict[str, Any]:
    if context.webhooks is None:
        return {"enabled": False, "webhooks": []}
    return {"enabled": True, "webhooks": context.webhooks.status()}
