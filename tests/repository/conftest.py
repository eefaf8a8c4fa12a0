"""What the repository contract suite shares: test UIDs, the StoredInstance a record should read back as, and the
aggregates a study or patient should have.

The contract runs every test against both stores through the `repository` fixture, parametrised over SQLite and
MongoDB (SecantusDB, or MONGO_TEST_URL). That fixture, `opened_repository` and `mongo_url` stay in
tests/conftest.py, because suites outside this folder (the query compilers, the study lifecycle, DIMSE
Q/R) run over both stores with them too.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from pymongo import AsyncMongoClient

from app.core.ports import Repository
from app.core.query.model import QueryModel
from app.core.records import InstanceRecord, StoredInstance
from app.repository.mongo.repository import MongoRepository
from app.repository.mongo.search import explain as mongo_explain
from app.repository.sqlite.repository import SQLiteRepository
from app.repository.sqlite.search import explain as sqlite_explain

Factory = Callable[..., InstanceRecord]

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.8.498.7"  # a UID root for test data


def uid(*parts: int) -> str:
    return ".".join([ROOT, *map(str, parts)])


def stored(record: InstanceRecord) -> StoredInstance:
    return StoredInstance(
        record.study_instance_uid,
        record.series_instance_uid,
        record.sop_instance_uid,
        record.sop_class_uid,
        record.transfer_syntax_uid,
        record.storage_key,
        record.size,
    )


def study_aggregates(
    series: int, instances: int, modalities: list[str], classes: list[str]
) -> dict[str, Any]:
    return {
        "number_of_study_related_series": series,
        "number_of_study_related_instances": instances,
        "modalities_in_study": modalities,
        "sop_classes_in_study": classes,
    }


def patient_aggregates(studies: int, series: int, instances: int) -> dict[str, Any]:
    return {
        "number_of_patient_related_studies": studies,
        "number_of_patient_related_series": series,
        "number_of_patient_related_instances": instances,
    }


async def query_plan(repository: Repository, query: QueryModel) -> list[str]:
    """How the store would run a search's page query: SQLite's EXPLAIN QUERY PLAN steps, or MongoDB's winning
    plan as one JSON text (read on a connection of the test's own, as an operator would)."""
    if isinstance(repository, SQLiteRepository):
        conn = sqlite3.connect(repository.path)
        try:
            return sqlite_explain(conn, query)
        finally:
            conn.close()
    assert isinstance(repository, MongoRepository)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(repository.url)
    try:
        explained = await mongo_explain(client[repository.database], query)
    finally:
        await client.close()
    return [json.dumps(explained["queryPlanner"]["winningPlan"])]
