"""Ingest hooks used through INGEST_HOOK by tests/core/ingest/test_rules.py and tests/dimse/test_data_phase.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset

from app.core.ingest.hooks import HookContext, HookReject
from app.core.ingest.outcomes import FailureReason


async def hook(dataset: Dataset, context: HookContext) -> str | HookReject | Mapping[str, Any] | None:
    patient_id = str(dataset.get("PatientID", ""))
    if patient_id == "BLOCK-ME":
        return "patient BLOCK-ME is not archived here"
    if patient_id == "NOT-YOU":
        return HookReject("not authorised", FailureReason.NOT_AUTHORIZED)
    if patient_id == "BROKEN":
        raise RuntimeError("hook bug")
    if patient_id == "SLOW":  # a store that takes a while (tests/dimse/test_data_phase.py: shutdown during it)
        await asyncio.sleep(1.0)
        return None
    if patient_id == "TAG-ME":
        return {"InstitutionName": f"via {context.origin or 'api'}", "PatientComments": None}
    return None


def not_async(dataset: Dataset, context: HookContext) -> None:
    return None
