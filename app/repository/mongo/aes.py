"""The MongoDB store's AEStore role: the registry of remote AEs (app/core/aes.py), one document per AE title."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pymongo.errors import DuplicateKeyError

from app.core.aes import RemoteAE
from app.repository.mongo.connection import MongoConnection, guarded

_AE_PROJECTION: dict[str, int] = {"_id": 0, "ae_title": 1, "host": 1, "port": 1, "tls": 1}


class MongoAEStore(MongoConnection):
    async def get_ae(self, ae_title: str) -> RemoteAE | None:
        with guarded():
            doc = await self._remote_aes.find_one({"ae_title": ae_title}, _AE_PROJECTION)
        return None if doc is None else _remote_ae(doc)

    async def list_aes(self) -> list[RemoteAE]:
        with guarded():
            return [
                _remote_ae(doc)
                async for doc in self._remote_aes.find({}, _AE_PROJECTION).sort("ae_title", 1)
            ]

    async def put_ae(self, ae: RemoteAE) -> bool:
        update = {"$set": {"host": ae.host, "port": ae.port, "tls": ae.tls, "updated_at": time.time()}}
        with guarded():
            for _ in range(2):
                try:
                    result = await self._remote_aes.update_one({"ae_title": ae.ae_title}, update, upsert=True)
                except DuplicateKeyError:
                    continue  # a concurrent put created it between our match and insert: now it matches
                return result.upserted_id is not None
        return False

    async def delete_ae(self, ae_title: str) -> bool:
        with guarded():
            result = await self._remote_aes.delete_one({"ae_title": ae_title})
        return result.deleted_count > 0


def _remote_ae(doc: Mapping[str, Any]) -> RemoteAE:
    return RemoteAE(str(doc["ae_title"]), str(doc["host"]), int(doc["port"]), bool(doc.get("tls", False)))
