"""The MongoDB instance index's unit of work: the writes of one store or delete, and the counts kept with them.

MongoDB standalone servers have no multi-document transactions, so one store is a sequence of single-document
writes, each atomic, ordered so that what a reader sees is never worse than a count one too high:

* store: the predecessor read (whole); series, study, patient documents (upsert + `$inc` in ONE atomic operation
  each, so an empty level deleted by a concurrent remove can never swallow the count); then the instance
  document, inserted or written over its predecessor's in one replace, so a reader (and a crash) finds the one
  or the other, never neither; then the ModalitiesInStudy / SOPClassesInStudy sets (`$addToSet`, atomic under
  concurrency; the journaled last write). Only then, the store on disk, is the predecessor taken out of the
  counts and the series' old modality out of the study;
* remove: the instance document first (`find_one_and_delete`: of two concurrent removers exactly one gets it
  and corrects the counts), then the counts, deleting a level only while its count is still zero, then the sets
  (a value is pulled only when no series/instance of the study holds it, and looked for again after the pull
  in case a concurrent store added a holder meanwhile).

A series is counted in the study its document names: the study its newest instance names, as its other
attributes are the newest instance's. A copy naming another study moves it there (uncounted from the old study once
the store stands); a study that goes while it still counts a series moved there (whose instances there are gone) hands the
series to the study its newest instance names. SQLite's store keeps the same rule.

A crash (or lost connection) between those writes leaves at most: a study/series/patient with counts one too
high, possibly with no instance (crash before the instance insert, or after the instance delete), a study
listing a modality its series no longer have, or a patient whose study moved to another patient with stale
counts. No instance is ever left without its series, study and patient, and none is lost: the instance
documents are the truth. A retried store then succeeds normally but the counts stay one too high;
`recount_study` (repair.py) recomputes a study's counts and sets from its instance documents (and drops emptied
levels). A failed store undoes what it can before it is raised: a document too large or not encodable was never
written, so its counts are taken back; a write concern not met (w=majority's wtimeout, `j` without a journal)
leaves the write applied, and a connection lost after the instance's write leaves it unknown, so the instance
document is put back as it was (deleted again, or its predecessor's written back, as ingest puts back the
predecessor's file), the counts one too high. When the server no longer answers even that, or the connection
went while the instance's write itself was under way (a write sent may still be applied later), the store raises
WriteOutcomeUnknown, and ingest keeps every file a document may name (app/core/ingest/service.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from bson import ObjectId
from pymongo import ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from app.core.dicom.attributes import Kind, Level, stored_at
from app.core.ports import WriteOutcomeUnknown
from app.core.records import InstanceRecord, LevelRecord, StoredInstance
from app.repository.mongo.connection import MongoConnection, journaled
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
    multi_key,
    stored,
)

log = logging.getLogger(__name__)


class _Superseded(Exception):
    """The predecessor a store read was removed or replaced before the store's write."""


class MongoUnitOfWork(MongoConnection):
    async def _add(self, record: InstanceRecord) -> tuple[bool, StoredInstance | None]:
        """Add the instance, count it, and return the predecessor it replaced (False when another store of the
        same SOP Instance UID won: nothing of this one is left).

        The instance document is written in one write whether it is new or replaces a predecessor, so there is
        never a moment without either; a store that fails after that write puts back what was there (the
        predecessor, or nothing), since ingest then puts back the predecessor's file.
        """
        # Whole, so that a store failing after its write can put it back.
        predecessor = await self._instances.find_one({"sop_instance_uid": record.sop_instance_uid})
        replaced = None if predecessor is None else stored(predecessor)
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
                "$inc": {SERIES_INSTANCES: 1},
            },
            {"_id": 0, "modality": 1, "study_instance_uid": 1},
        )
        new_series = series_before is None
        # A series is counted in the study its document names: the study its newest instance names, as its other
        # attributes are the newest instance's. One naming another study moves the series there (a study
        # corrected by re-sending its series under the right Study Instance UID, one instance at a time).
        held_in = series_before.get("study_instance_uid") if series_before else None
        moved_from = (
            (held_in, series_before.get("modality"))  # the study it leaves, and its modality there
            if series_before and held_in is not None and held_in != record.study_instance_uid
            else None
        )
        counted_series = int(new_series or moved_from is not None)

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
                "$inc": {STUDY_INSTANCES: 1, STUDY_SERIES: counted_series},
                "$setOnInsert": {MODALITIES: [], SOP_CLASSES: []},
            },
            {"_id": 0, "patient_key": 1, STUDY_SERIES: 1, STUDY_INSTANCES: 1},
        )
        # An instance naming another patient for an existing study moves the study to that patient (the newest
        # instance's patient attributes win, as for every other study attribute): its counts go with it.
        old_patient = study_before.get("patient_key") if study_before else None
        moved = old_patient is not None and old_patient != record.patient_key
        carried_series = int(study_before.get(STUDY_SERIES, 0)) if moved and study_before else 0
        carried_instances = int(study_before.get(STUDY_INSTANCES, 0)) if moved and study_before else 0
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
                    PATIENT_STUDIES: int(study_before is None or moved),
                    PATIENT_SERIES: counted_series + carried_series,
                    PATIENT_INSTANCES: 1 + carried_instances,
                },
            },
            {"_id": 1},
        )
        if moved and old_patient is not None:
            await self._uncount_patient(
                old_patient, studies=1, series=carried_series, instances=carried_instances
            )

        document: Document = {
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
            "version": ObjectId(),  # this store's own: what `_as_written` finds it by
        }
        # Chosen here for a new instance, so that an insert the server applied but then failed can go again.
        instance_id = ObjectId() if predecessor is None else predecessor["_id"]
        modality = series_fields.get("modality")
        written = False
        try:
            try:
                if predecessor is None:
                    await self._instances.insert_one({"_id": instance_id, **document})
                # Only over the predecessor as it was read: of two stores that read it, one replaces it.
                elif not (
                    await self._instances.replace_one(_as_written(predecessor), document)
                ).matched_count:
                    raise _Superseded  # removed or replaced since it was read
            except WriteConcernError:
                written = True  # applied, not confirmed
                raise
            written = True
            # Added after the instance exists, so a remover that looks for holders after its pull sees this one.
            additions: Document = {SOP_CLASSES: record.sop_class_uid}
            if modality:
                additions[MODALITIES] = modality
            # The store's last write, journaled: acknowledged once it and every write before it is on disk.
            await self._journaled_studies.update_one(
                {"study_instance_uid": record.study_instance_uid}, {"$addToSet": additions}
            )
        except (DuplicateKeyError, _Superseded):  # another store of this SOP Instance UID wrote first
            await self._undo_counts(record, moved_from)
            return False, None
        except Exception as exc:
            mine = {"_id": instance_id, **_as_written(document)}
            if written:  # a write concern not met at the instance's write, or any failure after it
                if not await self._put_back(mine, predecessor, record):
                    raise WriteOutcomeUnknown(f"MongoDB: {exc}") from exc
                # The predecessor stands again: so does its series' study (the counts stay one too high).
                try:
                    await self._undo_counts(record, moved_from, uncount=False)
                except PyMongoError as undo:
                    log.warning(
                        "series %s not moved back (recount its studies): %s", record.series_instance_uid, undo
                    )
                raise
            if isinstance(exc, ServerSelectionTimeoutError):
                raise  # nothing of the instance was sent; the counts stay one too high (see the module docstring)
            if isinstance(exc, ConnectionFailure):
                # Sent, and applied or not, now or later: undone if the server still answers, and ingest told that
                # the outcome is not known either way.
                await self._put_back(mine, predecessor, record)
                raise WriteOutcomeUnknown(f"MongoDB: {exc}") from exc
            # Too large for a document, not encodable, refused: the instance is not stored, so neither is its count.
            await self._undo_counts(record, moved_from)
            raise
        old_modality = series_before.get("modality") if series_before else None
        await self._settle(
            record, predecessor, old_modality if old_modality != modality else None, moved_from
        )
        return True, replaced

    async def _put_back(
        self, written: Document, predecessor: Document | None, record: InstanceRecord
    ) -> bool:
        """Undo the instance write of a store that failed after it, or may have (a write concern not met leaves
        a write applied; a lost connection leaves it unknown): ingest rolls the file back to the predecessor's, or
        to none, and the document must say the same. `written` finds this store's document (not there: its write
        was not applied). With w=1, as the failure may be w=majority's wtimeout, and journaled unless the URL
        says otherwise; the counts stay one too high, as after a lost connection (`recount_study` repairs them).
        False when the server did not answer."""
        url = self._client.write_concern.document
        concern = journaled(WriteConcern(w=1, **{key: url[key] for key in ("j", "fsync") if key in url}))
        instances = self._instances.with_options(write_concern=concern)
        try:
            if predecessor is None:
                undone = (await instances.delete_one(written)).deleted_count
            else:
                undone = (await instances.replace_one(written, predecessor)).matched_count
        except PyMongoError as exc:
            log.warning(
                "instance %s of a failed store could not be put back: %s", record.sop_instance_uid, exc
            )
            return False
        if undone:
            log.warning(
                "store of %s failed after its metadata was written; %s, the counts of study %s stay one too high "
                "until it is recounted",
                record.sop_instance_uid,
                "removed again" if predecessor is None else "the instance it replaced put back",
                record.study_instance_uid,
            )
        return True

    async def _undo_counts(
        self, record: InstanceRecord, moved_from: tuple[str, str | None] | None, *, uncount: bool = True
    ) -> None:
        """Take back what a store that does not stand did to the counts: its own count (`uncount`: a store put back
        keeps it, one too high), and the move of its series to its study (the old study is uncounted only once a
        store stands, in `_settle`), unless a later store has moved the series on."""
        moved_back = False
        if moved_from is not None:  # first, so that its study, if it goes now, finds no series to hand on
            back = await self._series.update_one(
                {
                    "series_instance_uid": record.series_instance_uid,
                    "study_instance_uid": record.study_instance_uid,
                },
                {"$set": {"study_instance_uid": moved_from[0]}},
            )
            moved_back = back.matched_count == 1
        if uncount:
            await self._uncount(record.study_instance_uid, record.series_instance_uid, record.sop_class_uid)
        if moved_back and moved_from is not None:
            await self._series_count(record.study_instance_uid, moved_from[1], -1)

    async def _settle(
        self,
        record: InstanceRecord,
        predecessor: Document | None,
        old_modality: str | None,
        moved_from: tuple[str, str | None] | None = None,
    ) -> None:
        """After a store is on disk: take its predecessor out of the counts, its series out of the study it moved
        from, and its series' old modality out of the study. Not undone if they fail (the store stands): the
        counts stay one too high, or the study lists a modality too many, until `recount_study`, as after a crash
        between them."""
        try:
            if moved_from is not None:
                await self._series_count(*moved_from, -1)
            if predecessor is not None:
                await self._uncount(
                    predecessor["study_instance_uid"],
                    predecessor["series_instance_uid"],
                    predecessor["sop_class_uid"],
                )
            if old_modality:
                await self._drop_if_unused(
                    record.study_instance_uid, MODALITIES, self._series, "modality", old_modality
                )
        except PyMongoError as exc:
            studies = {record.study_instance_uid}
            if predecessor is not None:
                studies.add(predecessor["study_instance_uid"])
            log.warning(
                "stored %s, but the counts could not be corrected (recount study %s): %s",
                record.sop_instance_uid,
                " and ".join(sorted(studies)),
                exc,
            )

    async def _remove(self, sop_instance_uid: str) -> StoredInstance | None:
        """Remove the instance and uncount it. Its removal is on disk before this returns: the file goes next, and
        a removal lost in a crash would bring back an instance without its file."""
        doc = await self._journaled_instances.find_one_and_delete(
            {"sop_instance_uid": sop_instance_uid}, projection=INSTANCE_PROJECTION
        )
        if doc is None:
            return None
        await self._uncount(doc["study_instance_uid"], doc["series_instance_uid"], doc["sop_class_uid"])
        return stored(doc)

    async def _uncount(self, study_uid: str, series_uid: str, sop_class_uid: str) -> None:
        """Take one instance out of the counts; levels left empty go."""
        series_after = await self._series.find_one_and_update(
            {"series_instance_uid": series_uid},
            {"$inc": {SERIES_INSTANCES: -1}},
            projection={"_id": 0, SERIES_INSTANCES: 1, "modality": 1, "study_instance_uid": 1},
            return_document=ReturnDocument.AFTER,
        )
        series_gone = (
            series_after is not None
            and await self._delete_if_empty(
                self._series, "series_instance_uid", series_uid, SERIES_INSTANCES, series_after
            )
            is not None
        )
        if series_gone and series_after and series_after.get("study_instance_uid", study_uid) != study_uid:
            # Counted in the study it had moved to, whose last instance of it had gone before.
            await self._series_count(series_after["study_instance_uid"], series_after.get("modality"), -1)
            series_gone = False
        study_after = await self._studies.find_one_and_update(
            {"study_instance_uid": study_uid},
            {"$inc": {STUDY_INSTANCES: -1, STUDY_SERIES: -int(series_gone)}},
            projection={"_id": 0, "patient_key": 1, STUDY_INSTANCES: 1, STUDY_SERIES: 1},
            return_document=ReturnDocument.AFTER,
        )
        if study_after is None:
            return
        deleted = await self._delete_if_empty(
            self._studies, "study_instance_uid", study_uid, STUDY_INSTANCES, study_after
        )
        study_gone = deleted is not None
        # A series moved here whose instances here are gone is still counted (its document names this study, its
        # other instances another): the patient stops counting it with the study. Read as deleted, so that a
        # series moved away meanwhile (uncounted from the patient by its mover) is not uncounted twice.
        series_left = int(deleted.get(STUDY_SERIES, 0)) if deleted is not None else 0
        await self._uncount_patient(
            study_after["patient_key"],
            studies=int(study_gone),
            series=int(series_gone) + series_left,
            instances=1,
        )
        if series_left:
            await self._rehome_series(study_uid)
        if study_gone:
            return
        await self._drop_if_unused(study_uid, SOP_CLASSES, self._instances, "sop_class_uid", sop_class_uid)
        if series_gone and series_after and series_after.get("modality"):
            await self._drop_if_unused(
                study_uid, MODALITIES, self._series, "modality", series_after["modality"]
            )

    async def _rehome_series(self, gone_study: str) -> None:
        """Series documents still naming a study that went (each had moved there, and its instances there are
        gone) move to the study their newest instance names, and are counted there: a study made again under
        that UID later must not find a series it never counted."""
        async for series in self._series.find(
            {"study_instance_uid": gone_study}, {"_id": 0, "series_instance_uid": 1, "modality": 1}
        ):
            series_uid = series["series_instance_uid"]
            newest = await self._instances.find_one(
                {"series_instance_uid": series_uid},
                {"_id": 0, "study_instance_uid": 1},
                sort=[("created_at", -1), ("sop_instance_uid", -1)],
            )
            if newest is None:
                continue
            home = newest["study_instance_uid"]
            # Matched, not modified: a store that made the study again may have named it already, uncounted.
            moved = await self._series.update_one(
                {"series_instance_uid": series_uid, "study_instance_uid": gone_study},
                {"$set": {"study_instance_uid": home}},
            )
            if moved.matched_count:
                await self._series_count(home, series.get("modality"), +1)

    async def _series_count(self, study_uid: str, modality: str | None, delta: int) -> None:
        """A series counted in `study_uid` from now on (+1: moved there without a store of it there), or no
        longer (-1: moved away, or gone): the study (if still held) and its patient count it, or not, and its
        modality joins the study, or leaves it unless another series of the study has it."""
        update: Document = {"$inc": {STUDY_SERIES: delta}}
        if modality and delta > 0:
            update["$addToSet"] = {MODALITIES: modality}
        study = await self._studies.find_one_and_update(
            {"study_instance_uid": study_uid}, update, projection={"_id": 0, "patient_key": 1}
        )
        if study is None:
            return
        await self._patients.update_one(
            {"patient_key": study["patient_key"]}, {"$inc": {PATIENT_SERIES: delta}}
        )
        if modality and delta < 0:
            await self._drop_if_unused(study_uid, MODALITIES, self._series, "modality", modality)

    async def _uncount_patient(self, patient_key: str, *, studies: int, series: int, instances: int) -> None:
        after = await self._patients.find_one_and_update(
            {"patient_key": patient_key},
            {"$inc": {PATIENT_STUDIES: -studies, PATIENT_SERIES: -series, PATIENT_INSTANCES: -instances}},
            projection={"_id": 0, PATIENT_INSTANCES: 1},
            return_document=ReturnDocument.AFTER,
        )
        if after is not None:
            await self._delete_if_empty(self._patients, "patient_key", patient_key, PATIENT_INSTANCES, after)

    @staticmethod
    async def _delete_if_empty(
        collection: AsyncCollection[Document], key: str, value: str, counter: str, after: Document
    ) -> Document | None:
        """The document as it was deleted, if its count was zero; else None."""
        if after.get(counter, 0) > 0:
            return None
        # The count is part of the filter: a store that counted itself in meanwhile keeps the document.
        return await collection.find_one_and_delete({key: value, counter: {"$lte": 0}})

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


def _as_written(document: Document) -> Document:
    """A filter that finds an instance document only as one store wrote it: every store writes its own `version`
    (a document written before there were versions matches as having none), and a replace keeps the `_id`."""
    found: Document = {"version": document.get("version")}
    if "_id" in document:
        found["_id"] = document["_id"]
    return found


def _multi(values: Mapping[str, list[str]]) -> Document:
    # Duplicates would only bloat the multikey index; order is kept for readability.
    return {multi_key(key): list(dict.fromkeys(v)) for key, v in values.items()}


def _fields(level: Level, record: LevelRecord) -> Document:
    # Every column, None included, so a value missing from a newer instance clears the old one (as in SQLite).
    return {a.field: record.values.get(a.field) for a in stored_at(level) if a.kind is Kind.COLUMN}
