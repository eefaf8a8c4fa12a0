"""The AEStore part of the Repository contract and the AERegistry over it, on SQLite and MongoDB alike.

Uses the `repository` fixture of tests/conftest.py (parametrised over both stores), as the rest of the contract
suite (tests/repository/) does. Parsing and validation of AE entries are tested here too.
"""

from __future__ import annotations

import asyncio

import pytest

from app.config import Settings
from app.core.aes import (
    AERegistry,
    InvalidAE,
    RemoteAE,
    normalise_ae_title,
    parse_remote_ae,
    parse_remote_aes,
)
from app.core.ports import Repository


async def test_an_ae_put_reads_back_and_a_second_put_replaces_it(repository: Repository) -> None:
    assert await repository.get_ae("PACS") is None
    assert await repository.put_ae(RemoteAE("PACS", "10.0.0.5", 104)) is True
    assert await repository.get_ae("PACS") == RemoteAE("PACS", "10.0.0.5", 104, False)
    assert await repository.put_ae(RemoteAE("PACS", "pacs.local", 11112, True)) is False
    assert await repository.get_ae("PACS") == RemoteAE("PACS", "pacs.local", 11112, True)
    assert await repository.list_aes() == [RemoteAE("PACS", "pacs.local", 11112, True)]


async def test_ae_titles_are_case_sensitive_and_listed_in_title_order(repository: Repository) -> None:
    for title in ("VIEWER", "ARCHIVE", "archive"):
        assert await repository.put_ae(RemoteAE(title, "127.0.0.1", 104))
    assert [ae.ae_title for ae in await repository.list_aes()] == ["ARCHIVE", "VIEWER", "archive"]
    assert await repository.get_ae("Archive") is None


async def test_deleting_an_ae_answers_whether_there_was_one(repository: Repository) -> None:
    await repository.put_ae(RemoteAE("PACS", "10.0.0.5", 104))
    assert await repository.delete_ae("PACS") is True
    assert await repository.delete_ae("PACS") is False
    assert await repository.get_ae("PACS") is None
    assert await repository.list_aes() == []


async def test_concurrent_puts_of_one_title_create_it_exactly_once(repository: Repository) -> None:
    created = await asyncio.gather(*(repository.put_ae(RemoteAE("RACE", "h", 100 + n)) for n in range(8)))
    assert created.count(True) == 1
    assert len(await repository.list_aes()) == 1


async def test_the_registry_validates_and_normalises_titles(repository: Repository) -> None:
    registry = AERegistry(repository)
    assert await registry.put(RemoteAE("  PACS ", " 10.0.0.5 ", 104)) is True
    assert await registry.get("PACS") == RemoteAE("PACS", "10.0.0.5", 104)
    assert await registry.get(" PACS  ") == RemoteAE("PACS", "10.0.0.5", 104)
    assert await registry.get("X" * 17) is None
    with pytest.raises(InvalidAE):
        await registry.put(RemoteAE("BAD\\AE", "h", 104))
    with pytest.raises(InvalidAE):
        await registry.put(RemoteAE("OK", "h", 0))
    assert await registry.all() == [RemoteAE("PACS", "10.0.0.5", 104)]
    assert await registry.delete("PACS") is True
    assert await registry.delete("\n") is False


async def test_loading_configured_aes_upserts_them_and_keeps_the_others(repository: Repository) -> None:
    registry = AERegistry(repository)
    await registry.put(RemoteAE("OTHER", "h", 1))
    await registry.put(RemoteAE("PACS", "old", 1))
    await registry.load(parse_remote_aes(["PACS@10.0.0.5:104", "VIEWER@viewer.local:11112+tls"]))
    assert await registry.all() == [
        RemoteAE("OTHER", "h", 1),
        RemoteAE("PACS", "10.0.0.5", 104),
        RemoteAE("VIEWER", "viewer.local", 11112, True),
    ]


@pytest.mark.parametrize(
    "title",
    ["", "   ", "A" * 17, "A\\B", "A\nB", "A\x1bB", "ÄRZTE"],
)
def test_invalid_ae_titles_are_refused(title: str) -> None:
    with pytest.raises(InvalidAE):
        normalise_ae_title(title)


def test_an_ae_title_of_sixteen_characters_with_inner_spaces_is_valid() -> None:
    assert normalise_ae_title(" MY AE TITLE 0123 ") == "MY AE TITLE 0123"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("PACS@10.0.0.5:104", RemoteAE("PACS", "10.0.0.5", 104)),
        ("PACS@host:11112+tls", RemoteAE("PACS", "host", 11112, True)),
        ("PACS@[::1]:104", RemoteAE("PACS", "::1", 104)),
        ("A@B@host:104", RemoteAE("A@B", "host", 104)),
    ],
)
def test_remote_ae_entries_parse(entry: str, expected: RemoteAE) -> None:
    assert parse_remote_ae(entry) == expected


@pytest.mark.parametrize("entry", ["PACS", "PACS@host", "PACS@host:x", "PACS@host:70000", "@host:104", "P@:104"])
def test_malformed_remote_ae_entries_are_refused(entry: str) -> None:
    with pytest.raises(InvalidAE):
        parse_remote_ae(entry)


def test_settings_refuse_a_bad_or_repeated_remote_ae() -> None:
    assert Settings(dimse_remote_aes="A@h:1, B@h:2+tls").dimse_remote_aes == ["A@h:1", "B@h:2+tls"]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DIMSE_REMOTE_AES"):
        Settings(dimse_remote_aes="A@h:1,A@g:2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DIMSE_REMOTE_AES"):
        Settings(dimse_remote_aes="A@h")  # type: ignore[arg-type]
