"""The MongoDB store's connection (the Connection role): the client, the collections, and the migrations.

The other roles (instances.py, search.py, feed.py, aes.py, workflow.py, repair.py) build on this class and wrap
every call to the server in `guarded`, so a server that cannot be reached is the repository's own outcome
wherever it happens. Migrations here are index specifications (migrations/mongo), as MongoDB has no schema to
change: each is an index to create, or one to drop (`"drop": true`) that a wider index of the same step starts
with: one index fewer to write per stored instance, and one plan fewer for the planner to try.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, OperationFailure, WriteConcernError

import migrations
from app.core.ports import RepositoryUnavailable
from app.repository.mongo.layout import Document

INDEX_NOT_FOUND = 27  # MongoDB's error code IndexNotFound


class IndexSpec(TypedDict, total=False):
    collection: str
    name: str
    keys: list[list[str | int]]
    unique: bool
    drop: bool


@contextmanager
def guarded() -> Iterator[None]:
    """Turn "the server cannot be reached" into the repository's own outcome (503 / 0xA700 at the doors).

    ConnectionFailure is the parent of AutoReconnect, NetworkTimeout, NotPrimaryError and
    ServerSelectionTimeoutError, so catching it covers every form of the server going away. A write concern not
    met (WriteConcernError: w=majority's wtimeout while secondaries lag, `j` on a server without a journal) is
    the same to a caller: the write could not be made durable now, so the store failed and may be sent again.
    """
    try:
        yield
    except (ConnectionFailure, WriteConcernError) as exc:
        raise RepositoryUnavailable(f"MongoDB: {exc}") from exc


class MongoConnection:
    def __init__(
        self, url: str, database: str, *, server_selection_timeout_ms: int = 2000, **client_options: Any
    ) -> None:
        """`client_options` go to the driver's client as they are (tests watch the commands sent with them)."""
        self.url = url
        self.database = database
        # A short server selection timeout makes an unreachable server an error in seconds, not the driver's
        # default 30 s for every request; the same bound applies to establishing a connection.
        self._client: AsyncMongoClient[Document] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=server_selection_timeout_ms,
            connectTimeoutMS=server_selection_timeout_ms,
            **client_options,
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
        self._leases: AsyncCollection[Document] = db["leases"]
        self._workitems: AsyncCollection[Document] = db["workitems"]
        self._performed_steps: AsyncCollection[Document] = db["performed_steps"]
        self._subscriptions: AsyncCollection[Document] = db["ups_subscriptions"]
        # For the writes a store or a delete is acknowledged after (`journaled`).
        concern = journaled(self._client.write_concern)
        self._journaled_studies = self._studies.with_options(write_concern=concern)
        self._journaled_instances = self._instances.with_options(write_concern=concern)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def open(self) -> None:
        with guarded():
            applied = {doc["_id"] async for doc in self._migrations.find({}, {"_id": 1})}
            for version, name, text in migrations.steps("mongo"):
                if version in applied:
                    continue
                specs: list[IndexSpec] = json.loads(text)
                # Creating an index that already exists with the same keys and options is a no-op, so a crash
                # between the indexes and the version document is repaired by running the step again.
                for spec in specs:
                    collection = self._db[spec["collection"]]
                    if spec.get("drop"):
                        # Gone already when the step runs again after a crash, or when another replica starting
                        # at the same time dropped it first.
                        try:
                            await collection.drop_index(spec["name"])
                        except OperationFailure as exc:
                            if exc.code != INDEX_NOT_FOUND:
                                raise
                        continue
                    await collection.create_index(
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
        with guarded():
            await self._client.admin.command("ping")

    async def schema_version(self) -> int:
        with guarded():
            doc = await self._migrations.find_one({}, sort=[("_id", -1)])
        return 0 if doc is None else int(doc["_id"])


def journaled(concern: WriteConcern) -> WriteConcern:
    """MONGO_URL's write concern, asking to be acknowledged only once the write is in the on-disk journal
    (`j: true`), unless the URL says itself: `journal=`, `fsync=true` (which the driver does not combine with
    `j`), or `w=0` (unacknowledged: nothing to wait for).

    The last write of a store, and the removal of a deleted instance, use it: a standalone server acknowledges a
    write held in memory by default and journals it within 100 ms, so a crash or power cut could lose a store
    already acknowledged, and the start-up sweep would then remove its file as an orphan (a file no metadata
    names), as SQLite's commits without synchronous=FULL could (sqlite/connection.py). WiredTiger's journal is
    written in order: the writes before that one are on disk with it. With `w=majority` (a replica set) the
    majority's journals hold it.
    """
    document = concern.document
    if "j" in document or "fsync" in document or not concern.acknowledged:
        return concern
    return WriteConcern(**{**document, "j": True})
