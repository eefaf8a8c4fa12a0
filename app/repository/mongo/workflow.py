"""The MongoDB store's workflow roles: UPS workitems, Modality Performed Procedure Steps and UPS subscriptions.

Collections `workitems`, `performed_steps` and `ups_subscriptions` (connection.py; indexes in
migrations/mongo/0006_workflow.json), with the SQLite columns' field names so both stores answer alike. A
record's DICOM JSON is an embedded document (`dataset`): its keys are eight hex digits, legal field names, and
nothing queries inside it, since matching stays with the query model (app/core/query/evaluate.py). (Its values
are strings and numbers BSON holds; only a UV value above 2**63 - 1 would not encode, and the driver refuses it.)
A step's studies are an array (`study_instance_uids`) under a multikey index. A subscription's filter is JSON
text, not a document: its keys are raw query keys, and a sequence path such as
"ScheduledStationNameCodeSequence.CodeValue" holds a dot, which a field name must not.

Why a replace is a compare-and-set (`update_one` with the version in the filter, one atomic write): two doors,
or two archive replicas on one database, may decide on the same workitem at once, e.g. both claiming it IN
PROGRESS, and PS3.4 CC.1.1 allows one performer only. Whoever writes first moves the version on; the other's
filter matches nothing, so its write is refused and its service reads again and decides anew.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.errors import DuplicateKeyError

from app.core.workflow.records import (
    PerformedProcedureStep,
    PerformedStepStatus,
    ProcedureStepState,
    Subscription,
    Workitem,
)
from app.repository.mongo.connection import MongoConnection, guarded
from app.repository.mongo.layout import Document

_NO_ID: dict[str, int] = {"_id": 0}
_NEWEST_FIRST = [("created_at", -1), ("sop_instance_uid", -1)]
_SUBSCRIPTION_ORDER = [("ae_title", 1), ("workitem_uid", 1)]  # null (a global one) before any UID


class MongoWorkitems(MongoConnection):
    async def create_workitem(self, workitem: Workitem) -> bool:
        with guarded():
            try:
                await self._workitems.insert_one(_workitem_document(workitem, 1))
            except DuplicateKeyError:
                return False
        return True

    async def get_workitem(self, sop_instance_uid: str) -> Workitem | None:
        with guarded():
            doc = await self._workitems.find_one({"sop_instance_uid": sop_instance_uid}, _NO_ID)
        return None if doc is None else _workitem(doc)

    async def replace_workitem(self, workitem: Workitem, expected_version: int) -> bool:
        with guarded():
            result = await self._workitems.update_one(
                {"sop_instance_uid": workitem.sop_instance_uid, "version": expected_version},
                {"$set": _workitem_document(workitem, expected_version + 1)},
            )
        return result.matched_count == 1

    async def find_workitems(
        self,
        *,
        states: Sequence[str] | None = None,
        on_worklist: bool | None = None,
        scheduled_from: str | None = None,
        scheduled_to: str | None = None,
        patient_id: str | None = None,
        station: str | None = None,
        after: str | None = None,
        limit: int = 1000,
    ) -> list[Workitem]:
        if limit <= 0:
            return []  # limit(0) would be no limit at all
        query: Document = {}
        if states is not None:
            query["state"] = {"$in": list(states)}
        if on_worklist is not None:
            query["on_worklist"] = on_worklist
        start: Document = {}
        if scheduled_from is not None:
            start["$gte"] = scheduled_from
        if scheduled_to is not None and (end := _successor(scheduled_to)) is not None:
            start["$lt"] = end
        if start:
            query["scheduled_start"] = start
        if patient_id is not None:
            query["patient_id"] = patient_id
        if station is not None:
            query["station"] = station
        if after is not None:
            query["sop_instance_uid"] = {"$gt": after}
        with guarded():
            cursor = self._workitems.find(query, _NO_ID).sort("sop_instance_uid", 1).limit(limit)
            return [_workitem(doc) async for doc in cursor]


class MongoPerformedSteps(MongoConnection):
    async def create_performed_step(self, step: PerformedProcedureStep) -> bool:
        doc = {**_step_fields(step, 1), "sop_instance_uid": step.sop_instance_uid, "created_at": step.created_at}
        with guarded():
            try:
                await self._performed_steps.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def get_performed_step(self, sop_instance_uid: str) -> PerformedProcedureStep | None:
        with guarded():
            doc = await self._performed_steps.find_one({"sop_instance_uid": sop_instance_uid}, _NO_ID)
        return None if doc is None else _performed_step(doc)

    async def replace_performed_step(self, step: PerformedProcedureStep, expected_version: int) -> bool:
        """As `replace_workitem`; `created_at` stays as created."""
        with guarded():
            result = await self._performed_steps.update_one(
                {"sop_instance_uid": step.sop_instance_uid, "version": expected_version},
                {"$set": _step_fields(step, expected_version + 1)},
            )
        return result.matched_count == 1

    async def list_performed_steps(
        self, *, study_instance_uid: str | None = None, offset: int = 0, limit: int = 100
    ) -> list[PerformedProcedureStep]:
        if limit <= 0:
            return []
        query = {} if study_instance_uid is None else {"study_instance_uids": study_instance_uid}
        with guarded():
            cursor = self._performed_steps.find(query, _NO_ID).sort(_NEWEST_FIRST).skip(max(offset, 0)).limit(limit)
            return [_performed_step(doc) async for doc in cursor]


class MongoSubscriptions(MongoConnection):
    async def put_subscription(self, subscription: Subscription) -> None:
        s = subscription
        key = {"ae_title": s.ae_title, "workitem_uid": s.workitem_uid}
        filter_text = None if s.filter is None else json.dumps(s.filter)
        update = {"$set": {"deletion_lock": s.deletion_lock, "filter": filter_text, "suspended": s.suspended}}
        with guarded():
            try:
                await self._subscriptions.update_one(key, update, upsert=True)
            except DuplicateKeyError:
                # A concurrent put created it between our match and insert: now it matches.
                await self._subscriptions.update_one(key, update)

    async def delete_subscription(self, ae_title: str, workitem_uid: str | None) -> bool:
        with guarded():
            result = await self._subscriptions.delete_one({"ae_title": ae_title, "workitem_uid": workitem_uid})
        return result.deleted_count > 0

    async def subscriptions(
        self, *, ae_title: str | None = None, workitem_uid: str | None = None, global_only: bool = False
    ) -> list[Subscription]:
        if global_only and workitem_uid is not None:
            return []  # a global subscription names no workitem
        query: Document = {}
        if ae_title is not None:
            query["ae_title"] = ae_title
        if workitem_uid is not None or global_only:
            query["workitem_uid"] = workitem_uid  # None: the global ones
        with guarded():
            cursor = self._subscriptions.find(query, _NO_ID).sort(_SUBSCRIPTION_ORDER)
            return [_subscription(doc) async for doc in cursor]


# -- documents -------------------------------------------------------------------------------------------------


def _successor(text: str) -> str | None:
    """The least string above every string that starts with `text` (None: there is none), so that
    `value < _successor(end)` is `value[:len(end)] <= end`, the end of a range at its own precision."""
    stem = text.rstrip(chr(0x10FFFF))
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    return stem[:-1] + chr(0xE000 if 0xD800 <= following <= 0xDFFF else following)  # surrogates do not encode


def _workitem_document(workitem: Workitem, version: int) -> Document:
    return {
        "sop_instance_uid": workitem.sop_instance_uid,
        "state": workitem.state.value,
        "transaction_uid": workitem.transaction_uid,
        "performed": workitem.performed,
        "on_worklist": workitem.on_worklist,
        "scheduled_start": workitem.scheduled_start,
        "patient_id": workitem.patient_id,
        "station": workitem.station,
        "version": version,
        "dataset": workitem.dataset,
    }


def _workitem(doc: Mapping[str, Any]) -> Workitem:
    return Workitem(
        sop_instance_uid=doc["sop_instance_uid"],
        state=ProcedureStepState(doc["state"]),
        dataset=doc["dataset"],
        transaction_uid=doc.get("transaction_uid"),
        performed=bool(doc["performed"]),
        version=int(doc["version"]),
        scheduled_start=doc["scheduled_start"],
        patient_id=doc["patient_id"],
        station=doc.get("station", ""),
    )


def _step_fields(step: PerformedProcedureStep, version: int) -> Document:
    """What a write sets: all but the key and `created_at`."""
    return {
        "status": step.status.value,
        "study_instance_uids": list(step.study_instance_uids),
        "version": version,
        "updated_at": step.updated_at,
        "dataset": step.dataset,
    }


def _performed_step(doc: Mapping[str, Any]) -> PerformedProcedureStep:
    return PerformedProcedureStep(
        sop_instance_uid=doc["sop_instance_uid"],
        status=PerformedStepStatus(doc["status"]),
        dataset=doc["dataset"],
        study_instance_uids=tuple(doc["study_instance_uids"]),
        version=int(doc["version"]),
        created_at=float(doc["created_at"]),
        updated_at=float(doc["updated_at"]),
    )


def _subscription(doc: Mapping[str, Any]) -> Subscription:
    filter_text = doc.get("filter")
    return Subscription(
        ae_title=doc["ae_title"],
        workitem_uid=doc.get("workitem_uid"),
        deletion_lock=bool(doc.get("deletion_lock", False)),
        filter=None if filter_text is None else json.loads(filter_text),
        suspended=bool(doc.get("suspended", False)),
    )
