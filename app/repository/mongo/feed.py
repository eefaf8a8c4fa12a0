"""The MongoDB store's study-lifecycle roles: the change feed, completion tracking, the outbox, the cursors and
the leases.

The change feed and the outbox are collections of their own; completion tracking reads and clears the
`completion_pending` flag that a store sets on the study document in the same upsert as its counts
(unit_of_work.py), so tracking costs no extra round trip and survives a restart.

Several archive processes may share the database (README "Scaling out"), and nothing here relies on one being
alone: claims on outbox entries (`claimed_until`) and study completions (`completion_claimed_until`) are set by
one conditional update each, leases are documents of their own taken by a conditional upsert (the unique `_id`
refuses a second holder), and the change feed's numbers are handed out under a lease on its counter, so entries
become visible in sequence order (see MongoChangeFeed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.core.lifecycle.feed import Change, NewChange, OutboxEntry, OutboxStatus, PendingStudy
from app.core.ports import RepositoryUnavailable
from app.repository.mongo.connection import MongoConnection, guarded
from app.repository.mongo.layout import Document

# How long a change feed append may hold the counter: an append is three writes, so this only matters when its
# process dies mid-way, and then bounds how long the other processes' appends wait.
APPEND_LEASE_SECONDS = 5.0
APPEND_WAIT_SECONDS = (0.002, 0.05)  # first and longest pause while another process appends


def _unclaimed(field: str, now: float) -> Document:
    """Documents whose claim in `field` is absent or ended by `now`."""
    return {"$or": [{field: {"$exists": False}}, {field: {"$lte": now}}]}


class MongoChangeFeed(MongoConnection):
    """Without a transaction, numbering and inserting are two writes, and several processes append: numbers
    taken by one `$inc` could become visible out of order (7 before 6), and a reader that moved past 7 would
    never see 6. So the counter document is also the appenders' lock: an append takes it (`writer`, with an
    expiry), inserts its entries after the committed `seq`, then advances `seq` and lets go in one update. The
    committed `seq` is the feed's visible end: readers read no further, so they see entries in order and never a
    gap that fills later. An appender that died holding the counter left entries above `seq` that nobody saw;
    the next one removes them once the lock has expired and it holds it."""

    async def append_changes(self, changes: Sequence[NewChange]) -> int:
        with guarded():
            if not changes:
                return await self.last_change_seq()
            token = uuid.uuid4().hex
            last = await self._take_counter(token)
            try:
                # Above the committed end lies only what an appender that died, or outlived its lease, left: never
                # seen by a reader, and in the way of these numbers.
                await self._changes.delete_many({"seq": {"$gt": last}})
                await self._changes.insert_many(
                    [
                        {
                            "seq": last + 1 + i,
                            "kind": c.kind,
                            "study_instance_uid": c.study_instance_uid,
                            "series_instance_uid": c.series_instance_uid,
                            "sop_instance_uid": c.sop_instance_uid,
                            "at": c.at,
                            "appender": token,
                        }
                        for i, c in enumerate(changes)
                    ],
                    ordered=True,
                )
                committed = await self._counters.update_one(
                    {"_id": "changes", "writer": token},
                    {"$set": {"seq": last + len(changes), "writer": None}},
                )
            except BaseException:
                with contextlib.suppress(PyMongoError):
                    await self._changes.delete_many({"appender": token})
                    await self._counters.update_one({"_id": "changes", "writer": token}, {"$set": {"writer": None}})
                raise
            if committed.modified_count != 1:
                # Held past its lease and taken over: these entries were never committed.
                with contextlib.suppress(PyMongoError):
                    await self._changes.delete_many({"appender": token})
                raise RepositoryUnavailable("MongoDB: a change feed append outlived its lease; try again")
            return last + len(changes)

    async def _take_counter(self, token: str) -> int:
        """Wait for the counter and take it; the committed seq. A plain conditional update (no upsert: a
        concurrent upsert may answer "no document before" on SecantusDB); the counter is created once, here."""
        pause, longest = APPEND_WAIT_SECONDS
        while True:
            now = time.time()
            before = await self._counters.find_one_and_update(
                {"_id": "changes", "$or": [{"writer": None}, {"writer_until": {"$lte": now}}]},
                {"$set": {"writer": token, "writer_until": now + APPEND_LEASE_SECONDS}},
                return_document=ReturnDocument.BEFORE,
            )
            if before is not None:
                return int(before.get("seq", 0))
            if await self._counters.find_one({"_id": "changes"}, {"_id": 1}) is None:
                with contextlib.suppress(DuplicateKeyError):
                    await self._counters.insert_one({"_id": "changes", "seq": 0, "writer": None})
                continue
            await asyncio.sleep(pause)  # another process is appending
            pause = min(pause * 2, longest)

    async def changes(self, since: int, limit: int, study: str | None = None) -> list[Change]:
        if limit <= 0:
            return []
        with guarded():
            # Up to the committed end only: entries above it are an append in flight (see the class docstring).
            query: dict[str, object] = {"seq": {"$gt": since, "$lte": await self.last_change_seq()}}
            if study is not None:
                query["study_instance_uid"] = study
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
        return 0 if counter is None else int(counter.get("seq", 0))  # none before the first append commits


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

    async def claim_completion(self, study_instance_uid: str, activity_at: float, now: float, until: float) -> bool:
        with guarded():
            result = await self._studies.update_one(
                {
                    "study_instance_uid": study_instance_uid,
                    "updated_at": activity_at,
                    "completion_pending": True,
                    **_unclaimed("completion_claimed_until", now),
                },
                {"$set": {"completion_claimed_until": until}},
            )
        return result.modified_count == 1

    async def mark_completed(self, study_instance_uid: str, activity_at: float) -> bool:
        with guarded():
            result = await self._studies.update_one(
                {"study_instance_uid": study_instance_uid, "updated_at": activity_at, "completion_pending": True},
                {"$set": {"completion_pending": False}, "$unset": {"completion_claimed_until": ""}},
            )
            if result.modified_count == 1:
                return True
            await self._studies.update_one(
                {"study_instance_uid": study_instance_uid}, {"$unset": {"completion_claimed_until": ""}}
            )
        return False

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
            due = {"target": target, "next_attempt_at": {"$lte": now}, **_unclaimed("claimed_until", now)}
            cursor = (
                self._outbox.find(due, {"_id": 0})
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

    async def outbox_claim(self, target: str, key: str, version: int, now: float, until: float) -> bool:
        with guarded():
            result = await self._outbox.update_one(
                {
                    "target": target,
                    "key": key,
                    "version": version,
                    "next_attempt_at": {"$lte": now},
                    **_unclaimed("claimed_until", now),
                },
                {"$set": {"claimed_until": until}},
            )
        return result.modified_count == 1

    async def outbox_done(self, target: str, key: str, version: int) -> bool:
        with guarded():
            result = await self._outbox.delete_one({"target": target, "key": key, "version": version})
            if result.deleted_count == 1:
                return True
            await self._release_entry(target, key)
        return False

    async def outbox_retry(self, target: str, key: str, version: int, next_attempt_at: float, error: str) -> None:
        with guarded():
            result = await self._outbox.update_one(
                {"target": target, "key": key, "version": version},
                {
                    "$inc": {"attempts": 1},
                    "$set": {"next_attempt_at": next_attempt_at, "last_error": error},
                    "$unset": {"claimed_until": ""},
                },
            )
            if result.matched_count == 0:
                await self._release_entry(target, key)

    async def _release_entry(self, target: str, key: str) -> None:
        """End the claim on an entry put again meanwhile, so its newer version is due at once."""
        await self._outbox.update_one({"target": target, "key": key}, {"$unset": {"claimed_until": ""}})

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


class MongoLeases(MongoConnection):
    async def acquire_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        with guarded():
            try:
                await self._leases.update_one(
                    {"_id": name, "$or": [{"holder": holder}, {"until": {"$lte": now}}]},
                    {"$set": {"holder": holder, "until": until}},
                    upsert=True,
                )
            except DuplicateKeyError:  # held by another: the upsert met its document
                return False
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        with guarded():
            await self._leases.delete_one({"_id": name, "holder": holder})
