"""Rendering turns (RENDER_CONCURRENCY, RENDER_WAIT_SECONDS) through the real HTTP door.

Each render holds a decoded frame and its output in memory, so the archive makes at most RENDER_CONCURRENCY at
once, whichever door asks (WADO-RS rendered and thumbnail, WADO-URI). The archive of this module has one turn
and waits at most 3 seconds for it. The renderer is wrapped (in this process, where the archive runs) to count
the renders in flight and, for one test, to hold them until released.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from app.config import Settings
from app.core.retrieve import service as retrieve
from tests import dicom_files
from tests.api.test_wado import error_comment, instance_path
from tests.servers import ArchiveServer, running_archive

WAIT_SECONDS = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    data_dir: Path = tmp_path_factory.mktemp("archive")
    settings = Settings(  # type: ignore[call-arg]
        data_dir=data_dir,
        dimse_enabled=False,
        render_concurrency=1,
        render_wait_seconds=WAIT_SECONDS,
        _env_file=None,
    )
    with running_archive(settings) as running:
        yield running


@pytest.fixture(scope="module")
def ct(server: ArchiveServer) -> Dataset:
    ds = dicom_files.renewed("CT_small.dcm")
    DICOMwebClient(server.dicomweb).store_instances([ds])
    return ds


class Renders:
    """Wraps the renderer: counts renders in flight, and holds each one while `hold` is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.entered = threading.Event()
        self.released = threading.Event()
        self.released.set()

    def wrap(self, make: Callable[..., bytes]) -> Callable[..., bytes]:
        def wrapped(*args: Any, **kwargs: Any) -> bytes:
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
            self.entered.set()
            try:
                time.sleep(0.2)  # long enough for the other requests to arrive meanwhile
                assert self.released.wait(30)
                return make(*args, **kwargs)
            finally:
                with self.lock:
                    self.in_flight -= 1

        return wrapped


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> Renders:
    counted = Renders()
    monkeypatch.setattr(retrieve, "render", counted.wrap(retrieve.render))
    monkeypatch.setattr(retrieve, "thumbnail", counted.wrap(retrieve.thumbnail))
    return counted


def doors(server: ArchiveServer, ds: Dataset) -> list[str]:
    """A rendered image through each door that renders."""
    wado_uri = (
        f"{server.base_url}/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}"
        f"&seriesUID={ds.SeriesInstanceUID}&objectUID={ds.SOPInstanceUID}"
    )
    instance = server.dicomweb + instance_path(ds)
    return [
        f"{instance}/rendered",
        f"{instance}/thumbnail",
        f"{instance}/frames/1/rendered?viewport=64,64",
        f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/thumbnail",
        f"{wado_uri}&contentType=image/png",
    ]


def test_renders_arriving_together_take_turns_and_all_succeed(
    server: ArchiveServer, ct: Dataset, renders: Renders
) -> None:
    urls = doors(server, ct)
    with ThreadPoolExecutor(len(urls)) as pool:
        answers = list(pool.map(lambda url: httpx.get(url, timeout=60), urls))
    assert [answer.status_code for answer in answers] == [200] * len(urls)
    assert renders.most == 1  # never two renders at once, yet nobody was refused: they queued


def test_a_render_that_finds_no_turn_in_time_is_503_with_retry_after(
    server: ArchiveServer, ct: Dataset, renders: Renders
) -> None:
    urls = doors(server, ct)
    first, others = urls[0], (urls[1], urls[-1])  # held by WADO-RS rendered; WADO-RS thumbnail and WADO-URI wait
    renders.released.clear()
    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(httpx.get, first, timeout=60)
        try:
            assert renders.entered.wait(30)  # the first request has the only turn
            for url in others:
                started = time.monotonic()
                refused = httpx.get(url, timeout=60)
                assert refused.status_code == 503, url
                assert time.monotonic() - started >= WAIT_SECONDS * 0.9  # it waited its turn first
                assert refused.headers["retry-after"] == "5"
                assert "rendering turns stayed busy" in error_comment(refused)
        finally:
            renders.released.set()
        assert holding.result().status_code == 200
    # The turn is free again once the held render is done.
    assert httpx.get(others[0], timeout=60).status_code == 200
