"""The real archive, started for tests: uvicorn serving `create_app(settings)` on 127.0.0.1 in a thread.

Tests talk to it through its real doors (HTTP, and DIMSE once enabled) exactly as users do.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from app.config import Settings
from app.main import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ArchiveServer:
    settings: Settings
    base_url: str

    @property
    def dicomweb(self) -> str:
        return f"{self.base_url}/dicom-web"


@contextmanager
def running_archive(settings: Settings) -> Iterator[ArchiveServer]:
    port = free_port()
    settings = settings.model_copy(update={"http_host": "127.0.0.1", "http_port": port})
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on",
        # As `python -m app serve`: X-Forwarded-* are judged by the app (TRUSTED_PROXIES), not by uvicorn.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="archive-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the archive under test did not start")
        time.sleep(0.02)
    try:
        yield ArchiveServer(settings=settings, base_url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
