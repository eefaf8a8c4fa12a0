"""The FastAPI application: `create_app(settings)` builds it; the lifespan opens and closes the archive.

No settings or engines are made at import time, so tests and the CLI each choose their own data directory and
metadata backend.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import admin, changes, delete, qido, stow, wado, wado_uri
from app.api.errors import DicomWebError, dicomweb_error_handler, http_error_handler, validation_error_handler
from app.api.urls import DICOMWEB_PREFIX
from app.config import Settings
from app.core.context import ArchiveContext

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = await ArchiveContext.open(settings)
        app.state.context = context
        log.info("archive open: data in %s, metadata in %s", settings.storage_path,
                 "MongoDB" if settings.mongo_url else settings.sqlite_path)
        try:
            # The DIMSE door shares this context (and this loop) with the HTTP door; it stops first, so its
            # last stores finish before the repository closes.
            app.state.dimse = None
            if settings.dimse_enabled:
                from dimse_bridge.server import start_dimse_server

                app.state.dimse = await start_dimse_server(context)
            await context.start_background()
            try:
                yield
            finally:
                if app.state.dimse is not None:
                    from dimse_bridge.server import stop_dimse_server

                    await stop_dimse_server(app.state.dimse)
        finally:
            await context.close()

    app = FastAPI(
        title="DICOMweb archive",
        version="0.1.0",
        summary="QIDO-RS, WADO-RS and STOW-RS (DICOM PS3.18) bridged to DIMSE",
        lifespan=lifespan,
    )
    app.add_exception_handler(DicomWebError, dicomweb_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.include_router(stow.router, prefix=DICOMWEB_PREFIX)
    app.include_router(qido.router, prefix=DICOMWEB_PREFIX)
    app.include_router(wado.router, prefix=DICOMWEB_PREFIX)
    app.include_router(wado_uri.router)  # PS3.18 §9: /wado, outside the DICOMweb root as viewers expect
    app.include_router(wado_uri.router, prefix=DICOMWEB_PREFIX, include_in_schema=False)
    app.include_router(delete.router, prefix=DICOMWEB_PREFIX)
    app.include_router(admin.router, prefix=admin.ADMIN_PREFIX)
    app.include_router(changes.router, prefix=changes.CHANGES_PREFIX)
    return app
