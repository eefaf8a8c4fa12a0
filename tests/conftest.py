"""Shared fixtures: the archive under test and real test data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from tests.servers import ArchiveServer, running_archive


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    """The real app over HTTP on 127.0.0.1, embedded SQLite store, one per test module."""
    data_dir: Path = tmp_path_factory.mktemp("archive")
    with running_archive(Settings(data_dir=data_dir, dimse_enabled=False, _env_file=None)) as server:  # type: ignore[call-arg]
        yield server
