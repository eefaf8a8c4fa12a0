"""The MongoDB repository, for archives that outgrow one SQLite file or want the metadata on its own server.

It keeps the SQLite repository's model so the two answer identically (one contract suite runs against both):
collections `patients`, `studies`, `series` and `instances`, with the field names of the SQLite columns (from
app/core/dicom/attributes.py), each level's DICOM JSON as an `attributes` sub-document, and each instance's whole
header as the DICOM JSON text `dataset`.

Why `attributes` is a sub-document and `dataset` a string: the level attributes are a small, fixed set from
the attribute table, so as a sub-document they can be projected one by one (QIDO `includefield`) and read in a
shell, at no risk (their values are strings and numbers BSON holds; no UV/SV that could overflow int64). The
dataset is the stored header, served whole by WADO-RS metadata: kept as the exact text it was given, it needs no
conversion either way and cannot fail to encode whatever the header holds.

Multi-valued keys (every value of a multi-valued attribute, keys inside sequences, the words of person names)
are arrays under a `multi` sub-document, one per attribute key, indexed as multikey indexes. MongoDB field names
cannot contain dots, so the key of a sequence path is encoded with "_" for "." (`mongo_query.multi_key`):
`{"multi": {"00100010": ["DOE", "JOHN"], "00101002_00100020": ["X"]}}`. As in SQLite, a study document also
holds its patient's multi-valued keys, since in the Study Root model they are matched at study level.

MongoDB standalone servers have no multi-document transactions, so one store is a sequence of single-document
writes, each atomic, ordered so that what a reader sees is never worse than a count one too high:

* add: series, study, patient documents (upsert + `$inc` in ONE atomic operation each, so an empty level
  deleted by a concurrent remove can never swallow the count), then the instance document, then the
  ModalitiesInStudy / SOPClassesInStudy sets (`$addToSet`, atomic under concurrency);
* remove: the instance document first (`find_one_and_delete`: of two concurrent removers exactly one gets it
  and corrects the counts), then the counts, deleting a level only while its count is still zero, then the sets
  (a value is pulled only when no series/instance of the study holds it, and looked for again after the pull
  in case a concurrent store added a holder meanwhile).

A crash (or lost connection) between those writes leaves at most: a study/series/patient with counts one too
high, possibly with no instance (crash before the instance insert, or after the instance delete), or a patient
whose study moved to another patient with stale counts. No instance is ever left without its series, study and
patient, and no file is lost: the instance documents are the truth. A retried store then succeeds normally but
the counts stay one too high; `recount_study` recomputes a study's counts and sets from its instance documents
(and drops emptied levels); nothing calls it on its own yet (the sweep does not track suspect studies). An error that is not the
server going away (document too large, not encodable) undoes the counts before it is raised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypedDict

from bson import ObjectId
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError

import migrations
from app.core.aes import RemoteAE
from app.core.dicom.attributes import Kind, Level, stored_at
from app.core.lifecycle.feed import Change, NewChange, OutboxEntry, OutboxStatus, PendingStudy
from app.core.ports import RepositoryUnavailable
from app.core.query.model import QueryModel, SearchResult
from app.core.records import InstanceRecord, LevelRecord, StoredDataset, StoredInstance
from app.repository.mongo_query import multi_key, run_search

Document = dict[str, Any]

_INSTANCE_FIELDS = (
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "storage_key",
    "size",
)
_INSTANCE_PROJECTION: dict[str, int] = {"_id": 0, **dict.fromkeys(_INSTANCE_FIELDS, 1)}
_IN_BATCH = 500  # UIDs per `$in`: bounded, so that a long request list stays within the document size limit
_INSTANCE_ORDER = [("series_instance_uid", 1), ("instance_number", 1), ("sop_instance_uid", 1)]

_SERIES_INSTANCES = "number_of_series_related_instances"
_STUDY_SERIES = "number_of_study_related_series"
_STUDY_INSTANCES = "number_of_study_related_instances"
_PATIENT_STUDIES = "number_of_patient_related_studies"
_PATIENT_SERIES = "number_of_patient_related_series"
_PATIENT_INSTANCES = "number_of_patient_related_instances"
_MODALITIES = "modalities_in_study"
_SOP_CLASSES = "sop_classes_in_study"

# A store loses a race only to another store of the same SOP Instance UID; a few tries settle any real burst.
_STORE_ATTEMPTS = 5


class IndexSpec(TypedDict, total=False):
    collection: str
    name: str
    keys: list[list[str | int]]
    unique: bool


def _scoped(study_uid: str, series_uid: str | None, sop_instance_uid: str | None) -> Document:
    """The instances of a study, one of its series, or one instance (as SQLite's `_scoped`)."""
    query: Document = {"study_instance_uid": study_uid}
    if series_uid is not None:
        query["series_instance_uid"] = series_uid
    if sop_instance_uid is not None:
        query["sop_instance_uid"] = sop_instance_uid
    return query


def _multi(values: Mapping[str, list[str]]) -> Document:
    # Duplicates would only bloat the multikey index; order is kept for readability.
    return {multi_key(key): list(dict.fromkeys(v)) for key, v in values.items()}


def _fields(level: Level, record: LevelRecord) -> Document:
    # Every column, None included, so a value missing from a newer instance clears the old one (as in SQLite).
    return {a.field: record.values.get(a.field) for a in stored_at(level) if a.kind is Kind.COLUMN}


def _stored(doc: Mapping[str, Any]) -> StoredInstance:
    return StoredInstance(*(doc[name] for name in _INSTANCE_FIELDS))


_AE_PROJECTION: dict[str, int] = {"_id": 0, "ae_title": 1, "host": 1, "port": 1, "tls": 1}


def _remote_ae(doc: Mapping[str, Any]) -> RemoteAE:
    return RemoteAE(str(doc["ae_title"]), str(doc["host"]), int(doc["port"]), bool(doc.get("tls", False)))


@contextmanager
def _guarded() -> Iterator[None]:
    """Turn "the server cannot be reached" into the repository's own outcome (503 / 0xA700 at the doors).

    ConnectionFailure is the parent of AutoReconnect, NetworkTimeout, NotPrimaryError and
    ServerSelectionTimeoutError, so catching it covers every form of the server going away.
    """
    try:
        yield
    except ConnectionFailure as exc:
        raise RepositoryUnavailable(f"MongoDB: {exc}") from exc


class MongoRepository:
    def __init__(self, url: str, database: str, *, server_selection_timeout_ms: int = 2000) -> None:
        self.url = url
        self.database = database
        # A short server selection timeout makes an unreachable server an error in seconds, not the driver's
        # default 30 s for every request; the same bound applies to establishing a connection.
        self._client: AsyncMongoClient[Document] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=server_selection_timeout_ms,
            connectTimeoutMS=server_selection_timeout_ms,
        )
        db: AsyncDatabase[Document] = self._client[database]
        self._db = db
        self._patients: AsyncCollection[Document] = db["patients"]
        self._studies: AsyncCollection[Document] = db["studies"]
        self._series: AsyncCollection[Document] = db["series"]
        self._instances: AsyncCollection[Document] = db["instances"]
        self._migrations: AsyncCollection[Document] = db["schema_migrations"]
        self._changes: AsyncCollection[Document] = db["changes"]
        self._counters: AsyncCollection[Document] = db["counters"]
        self._outbox: AsyncCollection[Document] = db["outbox"]
        self._remote_aes: AsyncCollection[Document] = db["remote_aes"]
        self._cursors: AsyncCollection[Document] = db["cursors"]

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def open(self) -> None:
        with _guarded():
            applied = {doc["_id"] async for doc in self._migrations.find({}, {"_id": 1})}
            for version, name, text in migrations.steps("mongo"):
                if version in applied:
                    continue
                specs: list[IndexSpec] = json.loads(text)
                # Creating an index that already exists with the same keys and options is a no-op, so a crash
                # between the indexes and the version document is repaired by running the step again.
                for spec in specs:
                    await self._db[spec["collection"]].create_index(
                        [(str(field), int(direction)) for field, direction in spec["keys"]],
                        name=spec["name"],
                        unique=spec.get("unique", False),
                    )
                await self._migrations.update_one(
                    {"_id": version},
                    {"$setOnInsert": {"name": name, "applied_at": time.time()}},
                    upsert=True,
                )

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> None:
        with _guarded():
            await self._client.admin.command("ping")

    async def schema_version(self) -> int:
        with _guarded():
            doc = await self._migrations.find_one({}, sort=[("_id", -1)])
        return 0 if doc is None else int(doc["_id"])

    # -- instances ---------------------------------------------------------------------------------------
    async def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with _guarded():
            doc = await self._instances.find_one({"sop_instance_uid": sop_instance_uid}, _INSTANCE_PROJECTION)
        return None if doc is None else _stored(doc)

    async def get_instances(self, sop_instance_uids: Sequence[str]) -> dict[str, StoredInstance]:
        found: dict[str, StoredInstance] = {}
        with _guarded():
            for start in range(0, len(sop_instance_uids), _IN_BATCH):
                query = {"sop_instance_uid": {"$in": list(sop_instance_uids[start : start + _IN_BATCH])}}
                async for doc in self._instances.find(query, _INSTANCE_PROJECTION):
                    stored = _stored(doc)
                    found[stored.sop_instance_uid] = stored
        return found

    async def store_instance(self, record: InstanceRecord) -> StoredInstance | None:
        with _guarded():
            previous: StoredInstance | None = None
            for _ in range(_STORE_ATTEMPTS):
                removed = await self._remove(record.sop_instance_uid)
                if removed is not None:
                    # When a concurrent store slipped in between two attempts, the one replaced last is what
                    # this store replaced.
                    previous = removed
                if await self._add(record):
                    return previous
        raise RepositoryUnavailable(
            f"MongoDB: instance {record.sop_instance_uid} kept being stored concurrently; try again"
        )

    async def delete_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with _guarded():
            return await self._remove(sop_instance_uid)

    async def find_instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        query = _scoped(study_instance_uid, series_instance_uid, sop_instance_uid)
        with _guarded():
            # instances_study_order provides this order, so a large study needs no in-memory sort.
            cursor = self._instances.find(query, _INSTANCE_PROJECTION).sort(_INSTANCE_ORDER)
            return [_stored(doc) async for doc in cursor]

    async def instance_datasets(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredDataset]:
        query = _scoped(study_instance_uid, series_instance_uid, sop_instance_uid)
        projection = {"_id": 0, "series_instance_uid": 1, "sop_instance_uid": 1, "dataset": 1}
        with _guarded():
            cursor = self._instances.find(query, projection).sort(_INSTANCE_ORDER)
            return [
                StoredDataset(doc["series_instance_uid"], doc["sop_instance_uid"], doc["dataset"])
                async for doc in cursor
            ]

    async def page_instances(self, after: str | None, limit: int) -> list[StoredInstance]:
        if limit <= 0:  # MongoDB reads limit 0 as "no limit"
            return []
        with _guarded():
            cursor = (
                self._instances.find({"sop_instance_uid": {"$gt": after or ""}}, _INSTANCE_PROJECTION)
                .sort("sop_instance_uid", 1)
                .limit(limit)
            )
            return [_stored(doc) async for doc in cursor]

    async def count_instances(self) -> int:
        with _guarded():
            # Exact, unlike estimated_document_count, which reads metadata a crash can leave stale.
            return await self._instances.count_documents({})

    async def search(self, query: QueryModel) -> SearchResult:
        """QIDO-RS / C-FIND matching, compiled to MongoDB filters by app/repository/mongo_query.py."""
        with _guarded():
            return await run_search(self._db, query)

    # -- aggregates (QIDO answers, statistics, the contract suite) ----------------------------------------
    async def study_aggregates(self, study_instance_uid: str) -> dict[str, Any] | None:
        with _guarded():
            doc = await self._studies.find_one(
                {"study_instance_uid": study_instance_uid},
                {"_id": 0, _STUDY_SERIES: 1, _STUDY_INSTANCES: 1, _MODALITIES: 1, _SOP_CLASSES: 1},
            )
        if doc is None:
            return None
        return {
            _STUDY_SERIES: doc[_STUDY_SERIES],
            _STUDY_INSTANCES: doc[_STUDY_INSTANCES],
            # $addToSet keeps no order; answers list the values sorted, as SQLite stores them.
            _MODALITIES: sorted(doc.get(_MODALITIES, [])),
            _SOP_CLASSES: sorted(doc.get(_SOP_CLASSES, [])),
        }

    async def series_aggregates(self, series_instance_uid: str) -> dict[str, Any] | None:
        with _guarded():
            doc = await self._series.find_one(
                {"series_instance_uid": series_instance_uid}, {"_id": 0, _SERIES_INSTANCES: 1}
            )
        return None if doc is None else {_SERIES_INSTANCES: doc[_SERIES_INSTANCES]}

    async def patient_aggregates(self, patient_key: str) -> dict[str, Any] | None:
        with _guarded():
            doc = await self._patients.find_one(
                {"patient_key": patient_key},
                {"_id": 0, _PATIENT_STUDIES: 1, _PATIENT_SERIES: 1, _PATIENT_INSTANCES: 1},
            )
        if doc is None:
            return None
        return {name: doc[name] for name in (_PATIENT_STUDIES, _PATIENT_SERIES, _PATIENT_INSTANCES)}

    # -- study lifecycle: change feed, completion tracking, outbox -----------------------------------------
    async def append_changes(self, changes: Sequence[NewChange]) -> int:
        """Sequence numbers come from one counter document (`$inc`, atomic), then the entries are inserted.
        One writer per archive process appends (app/core/lifecycle/changefeed.py), so entries appear in seq order; a
        crash between the two writes leaves a gap, never a reused number."""
        with _guarded():
            if not changes:
                return await self.last_change_seq()
            counter = await self._counters.find_one_and_update(
                {"_id": "changes"},
                {"$inc": {"seq": len(changes)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            last = int(counter["seq"]) if counter else len(changes)
            first = last - len(changes) + 1
            await self._changes.insert_many(
                [
                    {
                        "seq": first + i,
                        "kind": c.kind,
                        "study_instance_uid": c.study_instance_uid,
                        "series_instance_uid": c.series_instance_uid,
                        "sop_instance_uid": c.sop_instance_uid,
                        "at": c.at,
                    }
                    for i, c in enumerate(changes)
                ],
                ordered=True,
            )
            return last

    async def changes(self, since: int, limit: int) -> list[Change]:
        if limit <= 0:
            return []
        with _guarded():
            cursor = self._changes.find({"seq": {"$gt": since}}, {"_id": 0}).sort("seq", 1).limit(limit)
            return [
                Change(
                    doc["seq"], doc["kind"], doc["study_instance_uid"], doc.get("series_instance_uid"),
                    doc.get("sop_instance_uid"), doc["at"],
                )
                async for doc in cursor
            ]

    async def last_change_seq(self) -> int:
        with _guarded():
            counter = await self._counters.find_one({"_id": "changes"})
        return 0 if counter is None else int(counter["seq"])

    async def pending_completions(self, quiet_before: float, limit: int) -> list[PendingStudy]:
        if limit <= 0:
            return []
        with _guarded():
            cursor = (
                self._studies.find(
                    {"completion_pending": True, "updated_at": {"$lte": quiet_before}},
                    {"_id": 0, "study_instance_uid": 1, "updated_at": 1},
                )
                .sort("updated_at", 1)
                .limit(limit)
            )
            return [PendingStudy(doc["study_instance_uid"], doc["updated_at"]) async for doc in cursor]

    async def mark_completed(self, study_instance_uid: str, activity_at: float) -> bool:
        with _guarded():
            result = await self._studies.update_one(
                {"study_instance_uid": study_instance_uid, "updated_at": activity_at, "completion_pending": True},
                {"$set": {"completion_pending": False}},
            )
        return result.modified_count == 1

    async def outbox_put(self, target: str, key: str, payload: str) -> None:
        now = time.time()
        with _guarded():
            await self._outbox.update_one(
                {"target": target, "key": key},
                {
                    "$set": {"payload": payload, "attempts": 0, "next_attempt_at": now},
                    "$inc": {"version": 1},
                    "$setOnInsert": {"created_at": now, "last_error": None},
                },
                upsert=True,
            )

    async def outbox_due(self, target: str, now: float, limit: int) -> list[OutboxEntry]:
        if limit <= 0:
            return []
        with _guarded():
            cursor = (
                self._outbox.find({"target": target, "next_attempt_at": {"$lte": now}}, {"_id": 0})
                .sort("next_attempt_at", 1)
                .limit(limit)
            )
            return [
                OutboxEntry(
                    doc["target"], doc["key"], doc["payload"], int(doc["version"]), int(doc["attempts"]),
                    doc["next_attempt_at"], doc.get("last_error"), doc["created_at"],
                )
                async for doc in cursor
            ]

    async def outbox_done(self, target: str, key: str, version: int) -> bool:
        with _guarded():
            result = await self._outbox.delete_one({"target": target, "key": key, "version": version})
        return result.deleted_count == 1

    async def outbox_retry(self, target: str, key: str, version: int, next_attempt_at: float, error: str) -> None:
        with _guarded():
            await self._outbox.update_one(
                {"target": target, "key": key, "version": version},
                {"$inc": {"attempts": 1}, "$set": {"next_attempt_at": next_attempt_at, "last_error": error}},
            )

    async def outbox_status(self, target: str) -> OutboxStatus:
        with _guarded():
            pending = await self._outbox.count_documents({"target": target})
            failing = await self._outbox.count_documents({"target": target, "attempts": {"$gt": 0}})
            oldest = await self._outbox.find_one({"target": target}, {"created_at": 1}, sort=[("created_at", 1)])
            errored = await self._outbox.find_one(
                {"target": target, "last_error": {"$ne": None}}, {"last_error": 1}, sort=[("next_attempt_at", -1)]
            )
        return OutboxStatus(
            pending,
            failing,
            None if oldest is None else oldest["created_at"],
            None if errored is None else errored["last_error"],
        )

    # -- remote AEs ----------------------------------------------------------------------------------------
    async def get_ae(self, ae_title: str) -> RemoteAE | None:
        with _guarded():
            doc = await self._remote_aes.find_one({"ae_title": ae_title}, _AE_PROJECTION)
        return None if doc is None else _remote_ae(doc)

    async def list_aes(self) -> list[RemoteAE]:
        with _guarded():
            return [
                _remote_ae(doc)
                async for doc in self._remote_aes.find({}, _AE_PROJECTION).sort("ae_title", 1)
            ]

    async def put_ae(self, ae: RemoteAE) -> bool:
        update = {"$set": {"host": ae.host, "port": ae.port, "tls": ae.tls, "updated_at": time.time()}}
        with _guarded():
            for _ in range(2):
                try:
                    result = await self._remote_aes.update_one({"ae_title": ae.ae_title}, update, upsert=True)
                except DuplicateKeyError:
                    continue  # a concurrent put created it between our match and insert: now it matches
                return result.upserted_id is not None
        return False

    async def delete_ae(self, ae_title: str) -> bool:
        with _guarded():
            result = await self._remote_aes.delete_one({"ae_title": ae_title})
        return result.deleted_count > 0

    async def get_cursor(self, name: str) -> int | None:
        with _guarded():
            doc = await self._cursors.find_one({"_id": name})
        return None if doc is None else int(doc["value"])

    async def set_cursor(self, name: str, value: int) -> None:
        with _guarded():
            await self._cursors.update_one({"_id": name}, {"$set": {"value": value}}, upsert=True)

    # -- the unit of work ----------------------------------------------------------------------------------
    async def _add(self, record: InstanceRecord) -> bool:
        """Add the instance and count it; False when another store of the same SOP Instance UID won."""
        now = time.time()
        series_fields = _fields(Level.SERIES, record.series)
        series_before = await self._upsert(
            self._series,
            {"series_instance_uid": record.series_instance_uid},
            {
                "$set": {
                    **series_fields,
                    "series_instance_uid": record.series_instance_uid,
                    "study_instance_uid": record.study_instance_uid,
                    "attributes": record.series.attributes,
                    "multi": _multi(record.series.multi),
                    "updated_at": now,
                },
                "$inc": {_SERIES_INSTANCES: 1},
            },
            {"_id": 0, "modality": 1},
        )
        new_series = series_before is None

        patient_fields = _fields(Level.PATIENT, record.patient)
        study_before = await self._upsert(
            self._studies,
            {"study_instance_uid": record.study_instance_uid},
            {
                "$set": {
                    "patient_key": record.patient_key,
                    **patient_fields,
                    **_fields(Level.STUDY, record.study),
                    "study_instance_uid": record.study_instance_uid,
                    "study_datetime": record.study.values.get("study_datetime"),
                    # In the Study Root model the patient's attributes are study attributes (PS3.4 C.6.2.1).
                    "attributes": {**record.patient.attributes, **record.study.attributes},
                    "multi": _multi({**record.patient.multi, **record.study.multi}),
                    # `updated_at` is the study's last activity; completion is pending until the tracker
                    # (app/core/lifecycle/completion.py) reports it. Part of this upsert, so it costs no round trip.
                    "updated_at": now,
                    "completion_pending": True,
                },
                "$inc": {_STUDY_INSTANCES: 1, _STUDY_SERIES: int(new_series)},
                "$setOnInsert": {_MODALITIES: [], _SOP_CLASSES: []},
            },
            {"_id": 0, "patient_key": 1, _STUDY_SERIES: 1, _STUDY_INSTANCES: 1},
        )
        # An instance naming another patient for an existing study moves the study to that patient (the newest
        # instance's patient attributes win, as for every other study attribute): its counts go with it.
        old_patient = study_before.get("patient_key") if study_before else None
        moved = old_patient is not None and old_patient != record.patient_key
        carried_series = int(study_before.get(_STUDY_SERIES, 0)) if moved and study_before else 0
        carried_instances = int(study_before.get(_STUDY_INSTANCES, 0)) if moved and study_before else 0
        await self._upsert(
            self._patients,
            {"patient_key": record.patient_key},
            {
                "$set": {
                    **patient_fields,
                    "patient_key": record.patient_key,
                    "attributes": record.patient.attributes,
                    "multi": _multi(record.patient.multi),
                },
                "$inc": {
                    _PATIENT_STUDIES: int(study_before is None or moved),
                    _PATIENT_SERIES: int(new_series) + carried_series,
                    _PATIENT_INSTANCES: 1 + carried_instances,
                },
            },
            {"_id": 1},
        )
        if moved and old_patient is not None:
            await self._uncount_patient(
                old_patient, studies=1, series=carried_series, instances=carried_instances
            )

        try:
            await self._instances.insert_one(
                {
                    **_fields(Level.IMAGE, record.instance),
                    "sop_instance_uid": record.sop_instance_uid,
                    "series_instance_uid": record.series_instance_uid,
                    "study_instance_uid": record.study_instance_uid,
                    "sop_class_uid": record.sop_class_uid,
                    "transfer_syntax_uid": record.transfer_syntax_uid,
                    "storage_key": record.storage_key,
                    "size": record.size,
                    "attributes": record.instance.attributes,
                    "multi": _multi(record.instance.multi),
                    "dataset": record.dataset_json,
                    "created_at": now,
                }
            )
        except DuplicateKeyError:
            await self._uncount(record.study_instance_uid, record.series_instance_uid, record.sop_class_uid)
            return False
        except ConnectionFailure:
            raise  # nothing more can be written; the counts stay one too high (see the module docstring)
        except Exception:
            # Too large for a document, or not encodable: the instance is not stored, so neither is its count.
            await self._uncount(record.study_instance_uid, record.series_instance_uid, record.sop_class_uid)
            raise

        # Added after the instance exists, so a remover that looks for holders after its pull sees this one.
        additions: Document = {_SOP_CLASSES: record.sop_class_uid}
        modality = series_fields.get("modality")
        if modality:
            additions[_MODALITIES] = modality
        await self._studies.update_one(
            {"study_instance_uid": record.study_instance_uid}, {"$addToSet": additions}
        )
        old_modality = series_before.get("modality") if series_before else None
        if old_modality and old_modality != modality:
            await self._drop_if_unused(
                record.study_instance_uid, _MODALITIES, self._series, "modality", old_modality
            )
        return True

    async def _remove(self, sop_instance_uid: str) -> StoredInstance | None:
        doc = await self._instances.find_one_and_delete(
            {"sop_instance_uid": sop_instance_uid}, projection=_INSTANCE_PROJECTION
        )
        if doc is None:
            return None
        await self._uncount(doc["study_instance_uid"], doc["series_instance_uid"], doc["sop_class_uid"])
        return _stored(doc)

    async def _uncount(self, study_uid: str, series_uid: str, sop_class_uid: str) -> None:
        """Take one instance out of the counts; levels left empty go."""
        series_after = await self._series.find_one_and_update(
            {"series_instance_uid": series_uid},
            {"$inc": {_SERIES_INSTANCES: -1}},
            projection={"_id": 0, _SERIES_INSTANCES: 1, "modality": 1},
            return_document=ReturnDocument.AFTER,
        )
        series_gone = series_after is not None and await self._delete_if_empty(
            self._series, "series_instance_uid", series_uid, _SERIES_INSTANCES, series_after
        )
        study_after = await self._studies.find_one_and_update(
            {"study_instance_uid": study_uid},
            {"$inc": {_STUDY_INSTANCES: -1, _STUDY_SERIES: -int(series_gone)}},
            projection={"_id": 0, "patient_key": 1, _STUDY_INSTANCES: 1},
            return_document=ReturnDocument.AFTER,
        )
        if study_after is None:
            return
        study_gone = await self._delete_if_empty(
            self._studies, "study_instance_uid", study_uid, _STUDY_INSTANCES, study_after
        )
        await self._uncount_patient(
            study_after["patient_key"], studies=int(study_gone), series=int(series_gone), instances=1
        )
        if study_gone:
            return
        await self._drop_if_unused(study_uid, _SOP_CLASSES, self._instances, "sop_class_uid", sop_class_uid)
        if series_gone and series_after and series_after.get("modality"):
            await self._drop_if_unused(
                study_uid, _MODALITIES, self._series, "modality", series_after["modality"]
            )

    async def _uncount_patient(self, patient_key: str, *, studies: int, series: int, instances: int) -> None:
        after = await self._patients.find_one_and_update(
            {"patient_key": patient_key},
            {"$inc": {_PATIENT_STUDIES: -studies, _PATIENT_SERIES: -series, _PATIENT_INSTANCES: -instances}},
            projection={"_id": 0, _PATIENT_INSTANCES: 1},
            return_document=ReturnDocument.AFTER,
        )
        if after is not None:
            await self._delete_if_empty(self._patients, "patient_key", patient_key, _PATIENT_INSTANCES, after)

    @staticmethod
    async def _delete_if_empty(
        collection: AsyncCollection[Document], key: str, value: str, counter: str, after: Document
    ) -> bool:
        if after.get(counter, 0) > 0:
            return False
        # The count is part of the filter: a store that counted itself in meanwhile keeps the document.
        result = await collection.delete_one({key: value, counter: {"$lte": 0}})
        return result.deleted_count == 1

    async def _drop_if_unused(
        self, study_uid: str, array: str, holders: AsyncCollection[Document], field: str, value: str
    ) -> None:
        """Pull `value` from the study's `array` unless a series/instance of the study still holds it."""
        holder = {"study_instance_uid": study_uid, field: value}
        if await holders.find_one(holder, {"_id": 1}) is not None:
            return
        await self._studies.update_one({"study_instance_uid": study_uid}, {"$pull": {array: value}})
        # A store that inserted a holder before the pull may have spent its $addToSet before it too: look again.
        if await holders.find_one(holder, {"_id": 1}) is not None:
            await self._studies.update_one({"study_instance_uid": study_uid}, {"$addToSet": {array: value}})

    @staticmethod
    async def _upsert(
        collection: AsyncCollection[Document],
        key: Document,
        update: Document,
        projection: Mapping[str, int],
    ) -> Document | None:
        """Upsert in one atomic operation; None when this call created the document, else the document as it
        was before (empty when it was created by a concurrent call whose values are not known)."""
        new_id = ObjectId()
        update = {**update, "$setOnInsert": {**update.get("$setOnInsert", {}), "_id": new_id}}
        try:
            before = await collection.find_one_and_update(
                key, update, projection=projection, upsert=True, return_document=ReturnDocument.BEFORE
            )
        except DuplicateKeyError:
            # Two upserts of a new key at once: one inserted, the other hit the unique index. Now the
            # document exists, so the same operation is a plain update.
            before = await collection.find_one_and_update(
                key, update, projection=projection, upsert=True, return_document=ReturnDocument.BEFORE
            )
        if before is not None:
            return before
        # SecantusDB answers "no document before" to EVERY one of several concurrent upserts of a new key; the
        # _id written on insert says which call created it. (Real MongoDB answers right; there this one read
        # per new series/study/patient only confirms it.)
        created = await collection.find_one(key, {"_id": 1})
        return None if created is None or created["_id"] == new_id else {}

    # -- repair ----------------------------------------------------------------------------------------------
    async def recount_study(self, study_instance_uid: str) -> None:
        """Recompute a study's counts and sets, its series' and its patient's, from the instance documents.

        The repair for what a crash between two writes of a store can leave (see the module docstring); nothing
        calls it yet. Run it when no one is storing into the study: it reads, then writes.
        """
        with _guarded():
            await self._recount_study(study_instance_uid)

    async def _recount_study(self, study_uid: str) -> None:
        series_counts: dict[str, int] = {}
        pipeline: list[Document] = [
            {"$match": {"study_instance_uid": study_uid}},
            {"$group": {"_id": "$series_instance_uid", "n": {"$sum": 1}}},
        ]
        async for row in await self._instances.aggregate(pipeline):
            series_counts[row["_id"]] = row["n"]
        async for series in self._series.find({"study_instance_uid": study_uid}, {"series_instance_uid": 1}):
            uid = series["series_instance_uid"]
            if uid in series_counts:
                await self._series.update_one(
                    {"_id": series["_id"]}, {"$set": {_SERIES_INSTANCES: series_counts[uid]}}
                )
            else:
                await self._series.delete_one({"_id": series["_id"]})
        study = await self._studies.find_one({"study_instance_uid": study_uid}, {"patient_key": 1})
        if study is None:
            return
        if not series_counts:
            await self._studies.delete_one({"_id": study["_id"]})
        else:
            await self._studies.update_one(
                {"_id": study["_id"]},
                {
                    "$set": {
                        _STUDY_SERIES: len(series_counts),
                        _STUDY_INSTANCES: sum(series_counts.values()),
                        _MODALITIES: [
                            m
                            for m in await self._series.distinct(
                                "modality", {"study_instance_uid": study_uid}
                            )
                            if m
                        ],
                        _SOP_CLASSES: await self._instances.distinct(
                            "sop_class_uid", {"study_instance_uid": study_uid}
                        ),
                    }
                },
            )
        await self._recount_patient(study["patient_key"])

    async def _recount_patient(self, patient_key: str) -> None:
        totals = [
            row
            async for row in await self._studies.aggregate(
                [
                    {"$match": {"patient_key": patient_key}},
                    {
                        "$group": {
                            "_id": None,
                            "studies": {"$sum": 1},
                            "series": {"$sum": f"${_STUDY_SERIES}"},
                            "instances": {"$sum": f"${_STUDY_INSTANCES}"},
                        }
                    },
                ]
            )
        ]
        if not totals:
            await self._patients.delete_one({"patient_key": patient_key})
            return
        await self._patients.update_one(
            {"patient_key": patient_key},
            {
                "$set": {
                    _PATIENT_STUDIES: totals[0]["studies"],
                    _PATIENT_SERIES: totals[0]["series"],
                    _PATIENT_INSTANCES: totals[0]["instances"],
                }
            },
        )
