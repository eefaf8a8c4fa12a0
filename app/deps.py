"""Dependency aliases for the routers: the archive context lives on the application state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.context import ArchiveContext


def get_context(request: Request) -> ArchiveContext:
    context: ArchiveContext = request.app.state.context
    return context


Context = Annotated[ArchiveContext, Depends(get_context)]
