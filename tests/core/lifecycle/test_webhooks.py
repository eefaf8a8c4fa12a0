"""Webhooks: the change feed POSTed to receivers, in order, retried with backoff, never blocking ingest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from tests import dicom_files
from tests.servers import ArchiveServer, free_port, running_archive

MULTIPART = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'


class Receiver:
    """An HTTP endpoint that records what it is sent and refuses the first `fail_first` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.refused = 0
        self.fail_first = fail_first
        self.port = free_port()

        async def hook(request: Request) -> Response:
            if self.refused < self.fail_first:
                self.refused += 1
                return Response(status_code=503)
            self.received.append(await request.json())
            return Response(status_code=204)

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@contextmanager
def serving(receiver: Receiver) -> Iterator[Receiver]:
    server = uvicorn.Server(uvicorn.Config(receiver.app, host="127.0.0.1", port=receiver.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield receiver
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def stow_study(server: ArchiveServer, count: int) -> list[str]:
    first = dicom_files.renewed("CT_small.dcm")
    datasets = [first] + [
        dicom_files.renewed("CT_small.dcm", StudyInstanceUID=first.StudyInstanceUID) for _ in range(count - 1)
    ]
    body = dicom_files.multipart([dicom_files.part10(ds) for ds in datasets])
    started = time.monotonic()
    response = httpx.post(f"{server.dicomweb}/studies", content=body, headers={"Content-Type": MULTIPART}, timeout=60)
    assert response.status_code == 200 and time.monotonic() - started < 10
    return [ds.SOPInstanceUID for ds in datasets]


def settings_for(tmp_path: Path, *urls: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=tmp_path, dimse_enabled=False, study_quiet_seconds=0.5, webhook_urls=list(urls),
        outbox_retry_seconds=0.1, _env_file=None,
    )


def test_each_change_is_posted_in_order_to_every_receiver(tmp_path: Path) -> None:
    one, two = Receiver(), Receiver()
    with serving(one), serving(two), running_archive(settings_for(tmp_path, one.url, two.url)) as server:
        sops = stow_study(server, 2)

        def created(receiver: Receiver) -> list[str]:
            return sorted(e["SOPInstanceUID"] for e in receiver.received if e["type"] == "instance.created")

        def completed_after_both(receiver: Receiver) -> bool:
            kinds = [e["type"] for e in receiver.received]
            if created(receiver) != sorted(sops):
                return False
            last_created = max(i for i, kind in enumerate(kinds) if kind == "instance.created")
            return "study.completed" in kinds[last_created + 1 :]

        for receiver in (one, two):
            wait_for(lambda r=receiver: completed_after_both(r), "two stores and a completion")
            # Parts of one STOW-RS request may be stored concurrently: their order is the order stored. A study
            # also completes between them when the second is stored after the quiet time (a slow machine):
            # every change comes once, in the feed's order.
            assert [e["seq"] for e in receiver.received] == list(range(1, len(receiver.received) + 1))
            assert receiver.received[0]["source"] == "DICOMWEB"
        last = max(len(one.received), len(two.received))
        wait_for(lambda: len(one.received) == len(two.received) == last, "the same changes to both")
        status = httpx.get(f"{server.base_url}/api/webhooks/status", timeout=30).json()
        assert [w["delivered_seq"] for w in status["webhooks"]] == [last, last]


def test_a_failing_or_absent_receiver_loses_nothing_and_never_blocks_ingest(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=3)
    settings = settings_for(tmp_path, receiver.url)
    with running_archive(settings) as server:
        # The receiver is not even listening yet: the stores answer at once all the same.
        sops = stow_study(server, 2)
        wait_for(
            lambda: httpx.get(f"{server.base_url}/api/webhooks/status").json()["webhooks"][0]["last_error"] is not None,
            "a failed delivery",
        )
        with serving(receiver):
            wait_for(lambda: len(receiver.received) == 3, "every change after the outage")
            assert receiver.refused == 3
            assert sorted(e["SOPInstanceUID"] for e in receiver.received[:2]) == sorted(sops)
    # After a restart, delivery goes on from where it was: no replay, nothing skipped.
    with running_archive(settings) as server, serving(receiver):
        more = stow_study(server, 1)
        wait_for(lambda: len(receiver.received) == 5, "the changes made after the restart")
        assert [e["seq"] for e in receiver.received] == [1, 2, 3, 4, 5]
        assert receiver.received[3]["SOPInstanceUID"] == more[0]
