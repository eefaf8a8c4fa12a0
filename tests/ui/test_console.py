"""The console at /ui, driven in a real browser (chromium) against the real archive on 127.0.0.1.

Studies are stored through STOW-RS from real files (pydicom's test set with fresh UIDs), then found, opened,
uploaded, sent and deleted by clicking through the page as an operator would; what the page claims is checked
against the archive's own API and against the remote AE that received the instances.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from tests import dicom_files
from tests.api.workflow_client import workitem
from tests.servers import ArchiveServer, free_port
from tests.ui.conftest import screenshot

TIMEOUT = 30_000  # ms: a 2-core machine shared with other work


@dataclass
class Studies:
    john: Dataset
    jane: Dataset
    janet: Dataset


@pytest.fixture(scope="module")
def studies(archive_server: ArchiveServer) -> Studies:
    made = Studies(
        john=dicom_files.renewed("CT_small.dcm", PatientName="DOE^JOHN", PatientID="UI-1", AccessionNumber="ACC-1"),
        jane=dicom_files.renewed("MR_small.dcm", PatientName="ROE^JANE", PatientID="UI-2", AccessionNumber="ACC-2"),
        janet=dicom_files.renewed("CT_small.dcm", PatientName="DOE^JANET", PatientID="UI-3", AccessionNumber="ACC-3"),
    )
    dicom_files.stow(archive_server.dicomweb, [made.john, made.jane, made.janet])
    return made


def listed_patient_ids(page: Page) -> set[str]:
    expect(page.locator("#study-count")).to_be_visible(timeout=TIMEOUT)
    return set(page.locator("#studies tbody tr.study-row td:nth-child(2)").all_inner_texts())


def search(page: Page, **fields: str) -> None:
    for name, text in fields.items():
        page.fill(f"#study-search [name={name}]", text)
    page.click("#study-search button[type=submit]")
    page.wait_for_load_state()


def open_study(page: Page, archive: ArchiveServer, study: Dataset) -> None:
    page.goto(f"{archive.base_url}/ui/#/study/{study.StudyInstanceUID}")
    expect(page.locator("#series li.series")).to_have_count(1, timeout=TIMEOUT)


def qido_studies(archive: ArchiveServer, **keys: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{archive.dicomweb}/studies", params=keys, timeout=30)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def assert_each_stored(archive: ArchiveServer, datasets: list[Dataset]) -> None:
    """Each data set's patient has its study, and only it, in the archive."""
    for ds in datasets:
        assert [row["0020000D"]["Value"][0] for row in qido_studies(archive, PatientID=ds.PatientID)] == [
            ds.StudyInstanceUID
        ]


# --------------------------------------------------------------------------- studies


def test_the_studies_stored_by_stow_rs_are_listed_and_the_search_narrows_them(
    page: Page, archive_server: ArchiveServer, studies: Studies
) -> None:
    page.goto(f"{archive_server.base_url}/ui/")
    expect(page.locator("#studies tbody tr.study-row")).to_have_count(3, timeout=TIMEOUT)
    assert listed_patient_ids(page) == {"UI-1", "UI-2", "UI-3"}
    screenshot(page, "studies")

    search(page, PatientName="doe")  # a prefix, matched case-insensitively: DOE^JOHN and DOE^JANET
    expect(page.locator("#studies tbody tr.study-row")).to_have_count(2, timeout=TIMEOUT)
    assert listed_patient_ids(page) == {"UI-1", "UI-3"}
    expect(page.locator("#study-count")).to_have_text("1–2 of 2 studies")

    search(page, PatientName="", ModalitiesInStudy="MR")
    expect(page.locator("#studies tbody tr.study-row")).to_have_count(1, timeout=TIMEOUT)
    assert listed_patient_ids(page) == {"UI-2"}

    search(page, ModalitiesInStudy="", AccessionNumber="ACC-3")
    expect(page.locator("#studies tbody tr.study-row")).to_have_count(1, timeout=TIMEOUT)
    assert listed_patient_ids(page) == {"UI-3"}

    # CT_small.dcm was made on 2004-01-19, MR_small.dcm on 2004-08-26.
    search(page, AccessionNumber="", **{"from": "2004-08-01", "to": "2004-08-31"})
    expect(page.locator("#studies tbody tr.study-row")).to_have_count(1, timeout=TIMEOUT)
    assert listed_patient_ids(page) == {"UI-2"}

    search(page, PatientID="NOBODY", **{"from": "", "to": ""})
    expect(page.locator("#study-count")).to_have_text("No study matches", timeout=TIMEOUT)


def test_pages_of_studies_are_counted_and_walked(page: Page, archive_server: ArchiveServer) -> None:
    dicom_files.stow(
        archive_server.dicomweb,
        [dicom_files.renewed("CT_small.dcm", PatientName=f"PAGE^{n:02}", PatientID=f"PAGE-{n:02}") for n in range(30)],
    )
    page.goto(f"{archive_server.base_url}/ui/#/studies?PatientID=PAGE-*")
    expect(page.locator("#study-count")).to_have_text("1–25 of 30 studies", timeout=TIMEOUT)
    expect(page.locator("#studies tbody tr.study-row")).to_have_count(25)
    page.click("#next-page")
    expect(page.locator("#study-count")).to_have_text("26–30 of 30 studies", timeout=TIMEOUT)
    expect(page.locator("#studies tbody tr.study-row")).to_have_count(5)
    page.click("#previous-page")
    expect(page.locator("#study-count")).to_have_text("1–25 of 30 studies", timeout=TIMEOUT)
    # A column header sorts all matches on the server (QIDO-RS orderby), both ways, from the first page.
    first_id = page.locator("#studies tbody tr.study-row").first.locator("td").nth(1)
    page.click("#studies th >> text=Patient ID")
    expect(first_id).to_have_text("PAGE-00", timeout=TIMEOUT)
    page.click("#studies th >> text=Patient ID")
    expect(first_id).to_have_text("PAGE-29", timeout=TIMEOUT)  # stored last: on the second page unsorted
    expect(page.locator("#study-count")).to_have_text("1–25 of 30 studies")


def test_the_date_column_shows_the_newest_study_of_all_pages_first(page: Page, archive_server: ArchiveServer) -> None:
    # 30 studies a day apart, stored in no date order; the newest is stored 28th, past the first page of 25.
    days = [(n * 7 + 20) % 30 for n in range(30)]
    newest = days.index(29)
    assert newest >= 25
    dicom_files.stow(
        archive_server.dicomweb,
        [dicom_files.renewed("CT_small.dcm", PatientID=f"DATE-{n:02}", StudyDate=f"201901{day + 1:02}")
         for n, day in enumerate(days)],
    )
    page.goto(f"{archive_server.base_url}/ui/#/studies?PatientID=DATE-*")
    expect(page.locator("#study-count")).to_have_text("1–25 of 30 studies", timeout=TIMEOUT)
    rows = page.locator("#studies tbody tr.study-row")
    page.click("#studies th >> text=Date")
    expect(rows.first.locator("td").nth(1)).to_have_text(f"DATE-{newest:02}", timeout=TIMEOUT)
    expect(rows.first.locator("td").nth(2)).to_have_text("2019-01-30")
    expect(page.locator("#studies th >> text=Date")).to_have_text("Date ▼")
    shown = rows.locator("td:nth-child(3)").all_inner_texts()
    assert shown == sorted(shown, reverse=True) and len(shown) == 25
    screenshot(page, "studies-by-date")
    page.click("#next-page")
    expect(rows.first.locator("td").nth(2)).to_have_text("2019-01-05", timeout=TIMEOUT)
    page.click("#studies th >> text=Date")  # again: oldest first, back on the first page
    expect(rows.first.locator("td").nth(2)).to_have_text("2019-01-01", timeout=TIMEOUT)
    expect(page.locator("#study-count")).to_have_text("1–25 of 30 studies")


def test_a_study_page_shows_its_series_with_thumbnails_that_load_and_its_history(
    page: Page, archive_server: ArchiveServer, studies: Studies
) -> None:
    page.goto(f"{archive_server.base_url}/ui/#/studies?PatientID=UI-1")
    page.click("#studies tbody tr.study-row a")
    expect(page.locator("#series li.series")).to_have_count(1, timeout=TIMEOUT)
    expect(page.locator("h1")).to_contain_text("DOE, JOHN")
    expect(page.locator("dl.attributes")).to_contain_text(str(studies.john.StudyInstanceUID))
    expect(page.locator("#series")).to_contain_text("1 instances")
    thumbnail = page.locator("#series img.thumbnail")
    # Loaded and decoded, not a broken image: a decoded JPEG has a width.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#series img.thumbnail')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=TIMEOUT,
    )
    assert thumbnail.evaluate("i => i.naturalWidth") > 0
    expect(page.locator("#history")).to_contain_text("instance.created")
    expect(page.locator("#history")).to_contain_text(str(studies.john.SOPInstanceUID))
    screenshot(page, "study")


# --------------------------------------------------------------------------- upload


def write_files(folder: Path, datasets: list[Dataset]) -> list[Path]:
    paths = []
    for number, ds in enumerate(datasets):
        path = folder / f"upload-{number}.dcm"
        path.write_bytes(dicom_files.part10(ds))
        paths.append(path)
    return paths


def test_three_files_uploaded_through_the_page_are_stored_each_with_its_result(
    page: Page, archive_server: ArchiveServer, tmp_path: Path
) -> None:
    datasets = [
        dicom_files.renewed("CT_small.dcm", PatientID="UP-1"),
        dicom_files.renewed("MR_small.dcm", PatientID="UP-2"),
        dicom_files.renewed("MR_small_RLE.dcm", PatientID="UP-3"),
    ]
    files = write_files(tmp_path, datasets)
    page.goto(f"{archive_server.base_url}/ui/#/upload")
    page.set_input_files("#upload-files", [str(path) for path in files])
    expect(page.locator("#upload-summary")).to_have_text("Done: 3 stored, 0 replaced, 0 failed.", timeout=TIMEOUT)
    expect(page.locator("#upload-results tr[data-result=stored]")).to_have_count(3)
    screenshot(page, "upload")
    assert_each_stored(archive_server, datasets)

    # The same three again, a file that is not DICOM and one whose Series Instance UID is not a UID (PS3.5
    # 9.1: no leading zero): each line says what became of it, the refused one with the server's reason.
    junk = tmp_path / "notes.txt"
    junk.write_text("not a DICOM file")
    bad = tmp_path / "bad-uid.dcm"
    bad.write_bytes(dicom_files.part10(dicom_files.renewed("CT_small.dcm", SeriesInstanceUID="1.02.3")))
    page.goto(f"{archive_server.base_url}/ui/#/studies")
    page.goto(f"{archive_server.base_url}/ui/#/upload")
    page.set_input_files("#upload-files", [*map(str, files), str(junk), str(bad)])
    expect(page.locator("#upload-summary")).to_have_text("Done: 0 stored, 3 replaced, 2 failed.", timeout=TIMEOUT)
    expect(page.locator("#upload-results tr[data-result=replaced]")).to_have_count(3)
    failed = page.locator("#upload-results tr[data-result=failed]")
    expect(failed.filter(has_text="notes.txt")).to_contain_text("failed")
    refused = failed.filter(has_text="bad-uid.dcm")
    expect(refused).to_contain_text("(0xA900)")
    expect(refused).to_contain_text("leading zero")
    screenshot(page, "upload-results")


def test_a_folder_picked_with_its_subfolders_is_uploaded_and_a_file_in_it_that_is_not_dicom_fails_alone(
    page: Page, archive_server: ArchiveServer, tmp_path: Path
) -> None:
    folder = tmp_path / "exam"
    (folder / "series-1").mkdir(parents=True)
    (folder / "series-2" / "more").mkdir(parents=True)
    placed = {
        "series-1/ct.dcm": dicom_files.renewed("CT_small.dcm", PatientID="DIR-1"),
        "series-2/more/mr.dcm": dicom_files.renewed("MR_small.dcm", PatientID="DIR-2"),
        "jpeg-ls.dcm": dicom_files.renewed("MR_small_jpeg_ls_lossless.dcm", PatientID="DIR-3"),
    }
    for name, ds in placed.items():
        (folder / name).write_bytes(dicom_files.part10(ds))
    (folder / "series-2" / "README.txt").write_text("not a DICOM file")
    page.goto(f"{archive_server.base_url}/ui/#/upload")
    # The "Choose a folder" control: an <input webkitdirectory>, given the folder as a person picks it.
    page.set_input_files("#upload-folder", str(folder))
    expect(page.locator("#upload-summary")).to_have_text("Done: 3 stored, 0 replaced, 1 failed.", timeout=TIMEOUT)
    stored = page.locator("#upload-results tr[data-result=stored]")
    expect(stored).to_have_count(3)
    expect(stored.filter(has_text="exam/series-2/more/mr.dcm")).to_have_count(1)  # each file by its path
    failed = page.locator("#upload-results tr[data-result=failed]")
    expect(failed).to_have_text(re.compile(r"exam/series-2/README\.txt.*failed: not stored: the archive could not "
                                           r"read it as DICOM"))
    screenshot(page, "upload-folder")
    assert_each_stored(archive_server, list(placed.values()))


def test_files_dropped_on_the_drop_zone_are_uploaded(
    page: Page, archive_server: ArchiveServer
) -> None:
    datasets = [dicom_files.renewed("CT_small.dcm", PatientID=f"DROP-{n}") for n in range(2)]
    page.goto(f"{archive_server.base_url}/ui/#/upload")
    expect(page.locator("#dropzone")).to_be_visible(timeout=TIMEOUT)
    # What a drop from the desktop carries, built in the page: a DataTransfer holding the files.
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, bytes] of files) transfer.items.add(new File([new Uint8Array(bytes)], name));
            return transfer;
        }""",
        [[f"dropped-{n}.dcm", list(dicom_files.part10(ds))] for n, ds in enumerate(datasets)],
    )
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#dropzone")).to_have_class(re.compile(r"\bover\b"))
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#upload-summary")).to_have_text("Done: 2 stored, 0 replaced, 0 failed.", timeout=TIMEOUT)
    expect(page.locator("#dropzone")).not_to_have_class(re.compile(r"\bover\b"))
    expect(page.locator("#upload-results tr[data-result=stored]").filter(has_text="dropped-1.dcm")).to_have_count(1)
    assert_each_stored(archive_server, datasets)


# --------------------------------------------------------------------------- send, delete


@dataclass
class Receiver:
    title: str
    port: int
    received: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A pynetdicom storage SCP on 127.0.0.1 (every storage SOP class, C-ECHO too) that notes what it gets."""
    ae = AE(ae_title="UI-SCP")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    found = Receiver("UI-SCP", free_port())

    def on_store(event: Any) -> int:
        found.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    server = ae.start_server(("127.0.0.1", found.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield found
    finally:
        server.shutdown()


def test_a_study_sent_to_a_registered_ae_is_delivered_with_live_counts(
    page: Page, archive_server: ArchiveServer, studies: Studies, receiver: Receiver
) -> None:
    registered = httpx.put(
        f"{archive_server.base_url}/api/aes/{receiver.title}", json={"host": "127.0.0.1", "port": receiver.port}
    )
    assert registered.status_code in (200, 201)
    open_study(page, archive_server, studies.john)
    page.select_option("#send-to", receiver.title)
    page.click("#send")
    expect(page.locator("#action-status")).to_have_text(
        f"Sent to {receiver.title}: 1 sent, 0 with warnings, 0 failed", timeout=TIMEOUT
    )
    assert receiver.received == [studies.john.SOPInstanceUID]


def test_a_study_deleted_after_confirmation_is_gone(
    page: Page, archive_server: ArchiveServer, studies: Studies
) -> None:
    open_study(page, archive_server, studies.jane)
    page.click("#delete-study")
    expect(page.locator("#confirm")).to_contain_text("Delete this study?")
    screenshot(page, "delete-confirmation")
    page.click("#confirm-action")
    expect(page.locator("main")).to_contain_text("Study deleted (1 instances removed).", timeout=TIMEOUT)
    assert qido_studies(archive_server, StudyInstanceUID=str(studies.jane.StudyInstanceUID)) == []
    assert "UI-2" not in listed_patient_ids(page)


def test_a_cancelled_delete_keeps_the_study(page: Page, archive_server: ArchiveServer, studies: Studies) -> None:
    open_study(page, archive_server, studies.janet)
    page.click("#delete-study")
    page.click("#confirm button[value=cancel]")
    expect(page.locator("#confirm")).not_to_be_visible()
    assert len(qido_studies(archive_server, StudyInstanceUID=str(studies.janet.StudyInstanceUID))) == 1


# --------------------------------------------------------------------------- remote AEs, system, workflow


def test_remote_aes_are_added_echoed_edited_and_removed(
    page: Page, archive_server: ArchiveServer, receiver: Receiver
) -> None:
    page.goto(f"{archive_server.base_url}/ui/#/aes")
    page.fill("#add-ae [name=aeTitle]", "ECHO-ME")
    page.fill("#add-ae [name=host]", "127.0.0.1")
    page.fill("#add-ae [name=port]", str(receiver.port))
    page.click("#add-ae button[type=submit]")
    row = page.locator("#aes tr[data-aet=ECHO-ME]")
    expect(row).to_be_visible(timeout=TIMEOUT)
    row.locator("button.echo").click()
    expect(row.locator(".echo-result")).to_contain_text("echo OK", timeout=TIMEOUT)
    screenshot(page, "remote-aes")

    row.locator("text=Edit").click()
    page.fill("#edit-ECHO-ME [name=port]", "4242")
    page.click("#edit-ECHO-ME button[type=submit]")
    expect(page.locator("#aes tr[data-aet=ECHO-ME]")).to_contain_text("4242", timeout=TIMEOUT)
    assert httpx.get(f"{archive_server.base_url}/api/aes/ECHO-ME").json()["port"] == 4242

    page.locator("#aes tr[data-aet=ECHO-ME] >> text=Remove").click()
    page.click("#confirm-action")
    expect(page.locator("#ae-status")).to_contain_text("ECHO-ME removed.", timeout=TIMEOUT)
    assert httpx.get(f"{archive_server.base_url}/api/aes/ECHO-ME").status_code == 404


def test_the_system_page_shows_counts_probes_version_and_the_latest_changes(
    page: Page, archive_server: ArchiveServer, studies: Studies
) -> None:
    page.goto(f"{archive_server.base_url}/ui/#/system")
    statistics = httpx.get(f"{archive_server.base_url}/api/admin/statistics").json()
    expect(page.locator("#statistics")).to_contain_text(f"studies{statistics['studies']}", timeout=TIMEOUT)
    expect(page.locator("#probes")).to_contain_text("Health (/health)OK")
    expect(page.locator("#probes")).to_contain_text("Readiness (/ready)OK")
    expect(page.locator("#changes")).to_contain_text("instance.created")
    screenshot(page, "system")


def test_the_workflow_page_lists_worklist_workitems_and_performed_steps(
    page: Page, archive_server: ArchiveServer
) -> None:
    uid = generate_uid()
    created = httpx.post(  # UPS-RS Create Workitem (PS3.18 11.4)
        f"{archive_server.dicomweb}/workitems", params={"workitem": uid},
        json=workitem(PatientName="WORK^LIST", PatientID="WL-1", ProcedureStepLabel="CT abdomen"),
        headers={"Content-Type": "application/dicom+json"},
    )
    assert created.status_code == 201, created.text
    page.goto(f"{archive_server.base_url}/ui/#/workflow")
    for table in ("#worklist", "#workitems", "#mpps"):
        expect(page.locator(table)).to_be_visible(timeout=TIMEOUT)
    # A scheduled workitem is on the Modality Worklist too, for its station (CT1) and modality (CT).
    expect(page.locator("#worklist tbody tr")).to_contain_text(["WORK, LIST"])
    expect(page.locator("#worklist")).to_contain_text("CT1")
    row = page.locator(f"#workitems tr:has-text('{uid}')")
    expect(row).to_contain_text("CT abdomen")
    expect(row.locator(".state")).to_have_text("SCHEDULED")
    expect(row).to_contain_text("2030-01-01 09:00")
    screenshot(page, "workflow")
    page.select_option("#ups-state", "IN PROGRESS")
    expect(page.locator("#workitems")).to_contain_text("No workitem matches.", timeout=TIMEOUT)


# --------------------------------------------------------------------------- offline


def test_the_console_and_the_api_documentation_load_nothing_from_outside(
    context: BrowserContext, archive_server: ArchiveServer
) -> None:
    outside: list[str] = []

    def only_the_archive(route: Any) -> None:
        if route.request.url.startswith(archive_server.base_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_archive)
    page = context.new_page()
    page.goto(f"{archive_server.base_url}/ui/")
    expect(page.locator("#study-count")).to_be_visible(timeout=TIMEOUT)
    page.goto(f"{archive_server.base_url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("DICOMweb archive", timeout=TIMEOUT)
    expect(page.locator(".swagger-ui")).to_contain_text("/dicom-web/studies")
    screenshot(page, "api-docs")
    page.goto(f"{archive_server.base_url}/redoc")
    expect(page.locator("h1")).to_contain_text("DICOMweb archive", timeout=TIMEOUT)
    assert outside == []
