"""A search read a page at a time, so a huge match list never sits in memory (C-FIND streams its answers from it)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from typing import Protocol

from app.core.query.model import QueryModel, SearchResult
from app.core.records import JSONDict


class _Searcher(Protocol):
    async def search(self, query: QueryModel) -> SearchResult: ...


async def search_pages(
    repository: _Searcher, model: QueryModel, page_size: int
) -> AsyncGenerator[list[JSONDict], None]:
    """Every match of `model`, a page at a time (C-FIND streams its pending responses from these)."""
    offset = 0
    while True:
        result = await repository.search(dataclasses.replace(model, limit=page_size, offset=offset))
        if result.rows:
            yield result.rows
        if not result.remaining or not result.rows:
            return
        offset += len(result.rows)
