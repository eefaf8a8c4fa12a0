"""The metadata repository interface, implemented by SQLite (embedded default) and MongoDB.

Both implementations are exercised by one contract suite (tests/test_repository_contract.py), so a service
never needs to know which one it talks to. Aggregates (NumberOfStudyRelatedInstances, ModalitiesInStudy...) are
maintained by the repository in the same unit of work as the instance, because only it sees every store and
delete from every door.
"""

from __future__ import annotations

from typing import Protocol

from app.core.records import InstanceRecord, StoredInstance


class RepositoryUnavailable(RuntimeError):
    """The metadata store cannot be reached or written; callers answer 503 / 0xA700 and retry later."""


class Repository(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise RepositoryUnavailable unless the store answers."""

    async def schema_version(self) -> int: ...

    async def get_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    async def store_instance(self, record: InstanceRecord) -> StoredInstance | None:
        """Insert or replace the instance and update every aggregate; return the replaced one, if any."""

    async def delete_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        """Remove the instance and correct every aggregate; return what was removed."""

    async def find_instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        """Instances of a study, series or one instance, in series then instance-number order."""

    async def page_instances(self, after: str | None, limit: int) -> list[StoredInstance]:
        """All instances in SOP Instance UID order, a page at a time (sweep, re-index, statistics)."""

    async def count_instances(self) -> int: ...
