"""The MongoDB store's study-lifecycle roles: the change feed, completion tracking, the outbox and the cursors.

The change feed and the outbox are collections of their own; completion tracking reads and clears the
`completion_pending` flag that a store sets on the study document in the same upsert as its counts
(unit_of_work.py), so tracking costs no extra round trip and survives a restart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pymongo import ReturnDocument

from app.core.lifecycle.feed import Change, NewChange, OutboxEntry, OutboxStatus, PendingStudy
from app.repository.mongo.connection import MongoConnection, guarded


class MongoChangeFeed(MongoConnection):
    async def append_changes(self, changes: Sequence[NewChange]) -> int:
        """Sequence numbers come from one counter document (`$inc`, atomic), then the entries are inserted.
        One writer per archive process appends (app/core/lifecycle/changefeed.py), so entries appear in seq order; a
        crash between the two writes leaves a gap, never a reused number."""
        with guarded():
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

    async def changes(self, since: int, limit: int, study: str | None = None) -> list[Change]:
        if limit <= 0:
            return []
        query: dict[str, object] = {"seq": {"$gt": since}}
        if study is not None:
            query["study_instance_uid"] = study
        with guarded():
            cursor = self._changes.find(query, {"_id": 0}).sort("seq", 1).limit(limit)
            return [
                Change(
                    doc["seq"], doc["kind"], doc["study_instance_uid"], doc.get("series_instance_uid"),
                    doc.get("sop_instance_uid"), doc["at"],
                )
                async for doc in cursor
            ]

    async def last_change_seq(self) -> int:
        with guarded():
            counter = await self._counters.find_one({"_id": "changes"})
        return 0 if counter is None else int(counter["seq"])


class MongoCompletion(MongoConnection):
    async def pending_completions(self, quiet_before: float, limit: int) -> list[PendingStudy]:
        if limit <= 0:
            return []
        with guarded():
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
        with guarded():
            result = await self._studies.update_one(
                {"study_instance_uid": study_instance_uid, "updated_at": activity_at, "completion_pending": True},
                {"$set": {"completion_pending": False}},
            )
        return result.modified_count == 1

    async def pending_completion(self, study_instance_uid: str) -> PendingStudy | None:
        with guarded():
            doc = await self._studies.find_one(
                {"study_instance_uid": study_instance_uid, "completion_pending": True},
                {"_id": 0, "study_instance_uid": 1, "updated_at": 1},
            )
        return None if doc is None else PendingStudy(doc["study_instance_uid"], doc["updated_at"])


class MongoOutbox(MongoConnection):
    async def outbox_put(self, target: str, key: str, payload: str) -> None:
        now = time.time()
        with guarded():
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
        with guarded():
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
        with guarded():
            result = await self._outbox.delete_one({"target": target, "key": key, "version": version})
        return result.deleted_count == 1

    async def outbox_retry(self, target: str, key: str, version: int, next_attempt_at: float, error: str) -> None:
        with guarded():
            await self._outbox.update_one(
                {"target": target, "key": key, "version": version},
                {"$inc": {"attempts": 1}, "$set": {"next_attempt_at": next_attempt_at, "last_error": error}},
            )

    async def outbox_status(self, target: str) -> OutboxStatus:
        with guarded():
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


class MongoCursors(MongoConnection):
    async def get_cursor(self, name: str) -> int | None:
        with guarded():
            doc = await self._cursors.find_one({"_id": name})
        return None if doc is None else int(doc["value"])

    async def set_cursor(self, name: str, value: int) -> None:
        with guarded():
            await self._cursors.update_one({"_id": name}, {"$set": {"value": value}}, upsert=True)
