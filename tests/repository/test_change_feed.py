"""The ChangeFeedStore part of the Repository contract (app/core/ports.py): changes appended in order and read
back in pages, on SQLite and MongoDB alike (the `repository` fixture of tests/conftest.py)."""

from __future__ import annotations

from app.core.lifecycle.events import ChangeKind
from app.core.lifecycle.feed import NewChange
from app.core.ports import Repository


def change(kind: ChangeKind, study: str, sop: str | None = None, at: float = 1.0) -> NewChange:
    return NewChange(str(kind), study, "1.2.3" if sop else None, sop, at)


async def test_the_change_feed_is_ordered_and_paged(repository: Repository) -> None:
    assert await repository.last_change_seq() == 0
    assert await repository.changes(0, 10) == []
    last = await repository.append_changes(
        [change(ChangeKind.INSTANCE_CREATED, "1.1", f"1.1.{i}") for i in range(5)]
    )
    assert last == 5
    last = await repository.append_changes([change(ChangeKind.STUDY_COMPLETED, "1.1")])
    assert last == 6 == await repository.last_change_seq()
    first_page = await repository.changes(0, 4)
    assert [c.seq for c in first_page] == [1, 2, 3, 4]
    assert first_page[0].sop_instance_uid == "1.1.0" and first_page[0].kind == "instance.created"
    rest = await repository.changes(4, 100)
    assert [c.seq for c in rest] == [5, 6]
    assert rest[-1].kind == "study.completed" and rest[-1].sop_instance_uid is None
    assert rest[-1].to_json()["StudyInstanceUID"] == "1.1"
    assert await repository.changes(6, 10) == []
