"""The MongoDB store's InstanceIndex role: the instances held, found, stored and deleted, and their aggregates.

The writes of a store or delete, and the counts kept with them, are the unit of work (unit_of_work.py); here
are the role's methods over it and the reads. Every read is of one collection on an index the migrations make
(migrations/mongo), in the order the SQLite store answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.core.ports import RepositoryUnavailable
from app.core.records import InstanceRecord, StoredDataset, StoredInstance
from app.repository.mongo.connection import guarded
from app.repository.mongo.layout import (
    INSTANCE_PROJECTION,
    MODALITIES,
    PATIENT_INSTANCES,
    PATIENT_SERIES,
    PATIENT_STUDIES,
    SERIES_INSTANCES,
    SOP_CLASSES,
    STUDY_INSTANCES,
    STUDY_SERIES,
    Document,
    stored,
)
from app.repository.mongo.unit_of_work import MongoUnitOfWork

_IN_BATCH = 500  # UIDs per `$in`: bounded, so that a long request list stays within the document size limit
_INSTANCE_ORDER = [("series_instance_uid", 1), ("instance_number", 1), ("sop_instance_uid", 1)]

# A store loses a race only to another store of the same SOP Instance UID; a few tries settle any real burst.
_STORE_ATTEMPTS = 5


class MongoInstanceIndex(MongoUnitOfWork):
    async def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with guarded():
            doc = await self._instances.find_one({"sop_instance_uid": sop_instance_uid}, INSTANCE_PROJECTION)
        return None if doc is None else stored(doc)

    async def get_instances(self, sop_instance_uids: Sequence[str]) -> dict[str, StoredInstance]:
        found: dict[str, StoredInstance] = {}
        with guarded():
            for start in range(0, len(sop_instance_uids), _IN_BATCH):
                query = {"sop_instance_uid": {"$in": list(sop_instance_uids[start : start + _IN_BATCH])}}
                async for doc in self._instances.find(query, INSTANCE_PROJECTION):
                    instance = stored(doc)
                    found[instance.sop_instance_uid] = instance
        return found

    async def store_instance(self, record: InstanceRecord) -> StoredInstance | None:
        with guarded():
            for _ in range(_STORE_ATTEMPTS):
                added, previous = await self._add(record)
                if added:
                    return previous
        raise RepositoryUnavailable(
            f"MongoDB: instance {record.sop_instance_uid} kept being stored concurrently; try again"
        )

    async def delete_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with guarded():
            return await self._remove(sop_instance_uid)

    async def find_instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        query = _scoped(study_instance_uid, series_instance_uid, sop_instance_uid)
        with guarded():
            # instances_study_order provides this order, so a large study needs no in-memory sort.
            cursor = self._instances.find(query, INSTANCE_PROJECTION).sort(_INSTANCE_ORDER)
            return [stored(doc) async for doc in cursor]

    async def instance_datasets(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredDataset]:
        query = _scoped(study_instance_uid, series_instance_uid, sop_instance_uid)
        projection = {"_id": 0, "series_instance_uid": 1, "sop_instance_uid": 1, "dataset": 1}
        with guarded():
            cursor = self._instances.find(query, projection).sort(_INSTANCE_ORDER)
            return [
                StoredDataset(doc["series_instance_uid"], doc["sop_instance_uid"], doc["dataset"])
                async for doc in cursor
            ]

    async def page_instances(self, after: str | None, limit: int) -> list[StoredInstance]:
        if limit <= 0:  # MongoDB reads limit 0 as "no limit"
            return []
        with guarded():
            cursor = (
                self._instances.find({"sop_instance_uid": {"$gt": after or ""}}, INSTANCE_PROJECTION)
                .sort("sop_instance_uid", 1)
                .limit(limit)
            )
            return [stored(doc) async for doc in cursor]

    async def count_instances(self) -> int:
        with guarded():
            # Exact, unlike estimated_document_count, which reads metadata a crash can leave stale.
            return await self._instances.count_documents({})

    # -- aggregates (QIDO answers, statistics, the contract suite) ----------------------------------------
    async def study_aggregates(self, study_instance_uid: str) -> dict[str, Any] | None:
        with guarded():
            doc = await self._studies.find_one(
                {"study_instance_uid": study_instance_uid},
                {"_id": 0, STUDY_SERIES: 1, STUDY_INSTANCES: 1, MODALITIES: 1, SOP_CLASSES: 1},
            )
        if doc is None:
            return None
        return {
            STUDY_SERIES: doc[STUDY_SERIES],
            STUDY_INSTANCES: doc[STUDY_INSTANCES],
            # $addToSet keeps no order; answers list the values sorted, as SQLite stores them.
            MODALITIES: sorted(doc.get(MODALITIES, [])),
            SOP_CLASSES: sorted(doc.get(SOP_CLASSES, [])),
        }

    async def series_aggregates(self, series_instance_uid: str) -> dict[str, Any] | None:
        with guarded():
            doc = await self._series.find_one(
                {"series_instance_uid": series_instance_uid}, {"_id": 0, SERIES_INSTANCES: 1}
            )
        return None if doc is None else {SERIES_INSTANCES: doc[SERIES_INSTANCES]}

    async def patient_aggregates(self, patient_key: str) -> dict[str, Any] | None:
        with guarded():
            doc = await self._patients.find_one(
                {"patient_key": patient_key},
                {"_id": 0, PATIENT_STUDIES: 1, PATIENT_SERIES: 1, PATIENT_INSTANCES: 1},
            )
        if doc is None:
            return None
        return {name: doc[name] for name in (PATIENT_STUDIES, PATIENT_SERIES, PATIENT_INSTANCES)}


def _scoped(study_uid: str, series_uid: str | None, sop_instance_uid: str | None) -> Document:
    """The instances of a study, one of its series, or one instance (as SQLite's `_scoped`)."""
    query: Document = {"study_instance_uid": study_uid}
    if series_uid is not None:
        query["series_instance_uid"] = series_uid
    if sop_instance_uid is not None:
        query["sop_instance_uid"] = sop_instance_uid
    return query
