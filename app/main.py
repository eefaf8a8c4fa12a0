"""The FastAPI application: `create_app(settings)` builds it; the lifespan opens and closes the archive.

No settings or engines are made at import time, so tests and the CLI each choose their own data directory and
metadata backend.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from app.api import (
    admin,
    aes,
    changes,
    delete,
    fhir,
    observability,
    qido,
    stow,
    ups,
    ups_events,
    ups_subscriptions,
    wado_frames,
    wado_instances,
    wado_metadata,
    wado_rendered,
    wado_uri,
    workflow,
)
from app.api.auth import Authenticator, authorize
from app.api.docs import include_docs
from app.api.errors import (
    DicomWebError,
    InternalErrorMiddleware,
    dicomweb_error_handler,
    http_error_handler,
    repository_unavailable_handler,
    validation_error_handler,
)
from app.api.urls import DICOMWEB_PREFIX
from app.bootstrap import open_archive
from app.config import Settings
from app.core.audit import AuditLog
from app.core.metrics import Metrics
from app.core.ports import RepositoryUnavailable
from app.ui.console import include_console
from app.ui.viewer import viewer_routes

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, freeze_start_up: bool = False) -> FastAPI:
    """`freeze_start_up` (the server process, app/cli.py): once started, move everything start-up made out of
    the garbage collector's reach (`gc.freeze`)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = await open_archive(settings)
        app.state.context = context
        app.state.metrics.attach(context.events)
        # UPS-RS event channel (PS3.18 8.10): first, so an AE with a WebSocket open hears there, not by DIMSE.
        app.state.ups_events = ups_events.WebSocketChannel()
        context.ups.channels.insert(0, app.state.ups_events)
        log.info(
            "archive open: data in %s, metadata in %s",
            settings.storage_path,
            "MongoDB" if settings.mongo_url else settings.sqlite_path,
        )
        try:
            # The DIMSE door shares this context (and this loop) with the HTTP door; it stops first, so its
            # last stores finish before the repository closes.
            app.state.dimse = None
            if settings.dimse_enabled:
                from dimse_bridge.server import start_dimse_server

                app.state.dimse = await start_dimse_server(context)
                from dimse_bridge.observe import observe

                observe(app.state.dimse, app.state.metrics, app.state.audit)
            await context.start_background()
            if freeze_start_up:
                # Modules, the web app, the presentation contexts: start-up's objects live as long as the process.
                # Frozen, a full collection no longer walks them (~60 ms with the GIL held, which the allocations
                # of every few hundred requests or associations set off: py-spy put 1.5 ms of each getscu
                # association there).
                gc.freeze()
            try:
                yield
            finally:
                if app.state.dimse is not None:
                    from dimse_bridge.server import stop_dimse_server

                    await stop_dimse_server(app.state.dimse)
        finally:
            app.state.ups_events.close()
            await context.close()
            app.state.audit.close()

    app = FastAPI(
        title="DICOMweb archive",
        version="0.1.0",
        summary="QIDO-RS, WADO-RS, STOW-RS and UPS-RS (DICOM PS3.18) bridged to DIMSE",
        lifespan=lifespan,
        # Served by app/api/docs.py under API_DOCS, the document behind authentication by default.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    # Operations: metrics, audit trail, request ids (app/api/observability.py); authentication when enabled
    # (app/api/auth.py); CORS for viewers served from another origin.
    app.state.metrics = Metrics()
    app.state.audit = AuditLog(settings.audit_log, settings.audit_format)
    app.state.authenticator = Authenticator(settings) if settings.auth_enabled else None
    # Innermost: inside the middleware that sets the request id (so a crash's answer and log line carry it) and
    # inside CORS (so a viewer on another origin can read the 500).
    app.add_middleware(InternalErrorMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Accept", "Content-Type", "X-Request-ID"],
            expose_headers=["Warning", "X-Request-ID", "Content-Location", "X-Deleted-Instances"],
            max_age=600,
        )
    app.add_middleware(
        observability.ObservabilityMiddleware,
        metrics=app.state.metrics,
        audit=app.state.audit,
        trusted_proxies=settings.trusted_proxies,
    )
    # Every router but the probes carries an `authorize` dependency: the scope follows the HTTP method
    # (GET read, POST write, DELETE delete) or is `admin`. A router added here needs one too.
    by_method = [Depends(authorize())]
    admin_only = [Depends(authorize("admin"))]
    app.add_exception_handler(DicomWebError, dicomweb_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(RepositoryUnavailable, repository_unavailable_handler)
    app.include_router(stow.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    app.include_router(qido.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    # WADO-RS, in the order its routes have always been matched.
    app.include_router(wado_instances.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    app.include_router(wado_metadata.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    app.include_router(wado_frames.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    app.include_router(wado_rendered.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    # PS3.18 §9: /wado, outside the DICOMweb root as viewers expect
    app.include_router(wado_uri.router, dependencies=by_method)
    app.include_router(
        wado_uri.router, prefix=DICOMWEB_PREFIX, include_in_schema=False, dependencies=by_method
    )
    app.include_router(delete.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    # UPS-RS (PS3.18 11) and the operators' MPPS and worklist listings. The event channel is a WebSocket: it
    # checks the same credentials itself (scope read), having no HTTP method for `authorize` to go by.
    app.include_router(ups.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    # Subscribing and unsubscribing both change only the subscriber's own interest: `write`, DELETE included.
    app.include_router(ups_subscriptions.router, prefix=DICOMWEB_PREFIX, dependencies=[Depends(authorize("write"))])
    app.include_router(ups_events.router, prefix=DICOMWEB_PREFIX)
    app.include_router(workflow.router, prefix=DICOMWEB_PREFIX, dependencies=by_method)
    app.include_router(admin.router, prefix=admin.ADMIN_PREFIX, dependencies=admin_only)
    app.include_router(changes.router, prefix=changes.CHANGES_PREFIX, dependencies=by_method)
    app.include_router(changes.admin_router, prefix=changes.CHANGES_PREFIX, dependencies=admin_only)
    app.include_router(fhir.router, prefix=fhir.FHIR_PREFIX, dependencies=admin_only)
    app.include_router(aes.router, prefix=aes.AES_PREFIX, dependencies=admin_only)
    app.include_router(observability.router, dependencies=admin_only)  # /metrics
    app.include_router(observability.probes)  # /health, /ready: open to orchestrators
    include_docs(app, settings.api_docs, settings.auth_enabled)
    # The operator console (/ui, its /ui/whoami needs `read`) and the OHIF Viewer (/viewer): app/ui/.
    include_console(app, settings)
    app.router.routes.extend(viewer_routes(settings.viewer_path))
    return app
