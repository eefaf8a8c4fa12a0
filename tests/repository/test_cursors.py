"""The Cursors part of the Repository contract (app/core/ports.py): a position kept by name (a webhook's place in
the change feed), on SQLite and MongoDB alike (the `repository` fixture of tests/conftest.py)."""

from __future__ import annotations

from app.core.ports import Repository


async def test_cursors_are_kept_by_name(repository: Repository) -> None:
    assert await repository.get_cursor("webhook:http://a") is None
    await repository.set_cursor("webhook:http://a", 5)
    await repository.set_cursor("webhook:http://a", 7)
    await repository.set_cursor("webhook:http://b", 1)
    assert await repository.get_cursor("webhook:http://a") == 7
    assert await repository.get_cursor("webhook:http://b") == 1
