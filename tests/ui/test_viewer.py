"""OHIF at /viewer, opened from the console, shows a CT study stored in the archive: its canvas holds an image.

The real `@ohif/app` comes from the npm registry through `python -m app viewer install`, once per session into a
cache folder (OHIF_CACHE, default ~/.cache/dicomweb-archive), reused while the version and the installer are
unchanged. "Not blank" is judged on the canvas's pixels (their spread), not on the page having loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import BrowserContext, Page, expect

from app.config import Settings
from app.ui import viewer_install
from tests import dicom_files
from tests.servers import ArchiveServer, running_archive
from tests.ui.conftest import screenshot

ROOT = Path(__file__).resolve().parents[2]
RENDER_SECONDS = 90  # OHIF on SwiftShader, two shared cores


@pytest.fixture(scope="session")
def ohif() -> Path:
    """The installed viewer folder, made by the CLI unless this version and installer made it already."""
    installer = hashlib.sha256(Path(viewer_install.__file__).read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("OHIF_CACHE") or Path.home() / ".cache" / "dicomweb-archive")
    folder = cache / f"ohif-{viewer_install.DEFAULT_VERSION}-{installer}"
    if viewer_install.installed_version(folder) != viewer_install.DEFAULT_VERSION:
        result = subprocess.run(
            [sys.executable, "-m", "app", "viewer", "install"],
            env={**os.environ, "VIEWER_DIR": str(folder)},
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        )
        assert result.returncode == 0, f"the viewer could not be installed: {result.stderr[-2000:]}"
    return folder


@pytest.fixture(scope="module")
def archive(ohif: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("viewer"), viewer_dir=ohif, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        yield server


def canvas_spread(page: Page) -> float:
    """The standard deviation of the grey levels of OHIF's largest viewport canvas, as a screenshot shows it."""
    canvases = page.locator("canvas.cornerstone-canvas")
    if canvases.count() == 0:
        return 0.0
    picture = Image.open(io.BytesIO(canvases.first.screenshot())).convert("L")
    return float(np.asarray(picture, dtype=np.float64).std())


def test_ohif_opened_from_the_console_shows_the_ct_study(
    context: BrowserContext, page: Page, archive: ArchiveServer
) -> None:
    ct = dicom_files.renewed("CT_small.dcm", PatientName="VIEWER^CT", PatientID="VIEW-1")
    dicom_files.stow(archive.dicomweb, [ct])
    page.goto(f"{archive.base_url}/ui/#/study/{ct.StudyInstanceUID}")
    link = page.locator("#open-viewer")
    expect(link).to_have_attribute("href", f"/viewer/viewer?StudyInstanceUIDs={ct.StudyInstanceUID}")
    with context.expect_page() as opened:
        link.click()
    viewer = opened.value
    spread = rendered_spread(viewer)
    assert_no_tour(viewer)
    screenshot(viewer, "viewer")
    # A blank (or one-colour) canvas has a spread near 0; the CT slice has bone, tissue and air.
    assert spread > 10, f"OHIF's canvas stayed blank (grey-level spread {spread:.1f})"
    expect(viewer.locator("body")).to_contain_text("19-Jan-2004")  # the study date, read from the archive



def assert_no_tour(viewer: Page) -> None:
    """No first-visit tour (Shepherd's step dialogs, "1/11 ... Skip all") over the study: app-config.js turns
    OHIF's tours off. Asked once the image is drawn, long after OHIF's layout would have started one."""
    expect(viewer.locator(".shepherd-element")).to_have_count(0)
    expect(viewer.get_by_text("Skip all")).to_have_count(0)


def rendered_spread(viewer: Page) -> float:
    """Wait for OHIF's viewport to hold an image; its grey-level spread (near 0 while blank)."""
    viewer.wait_for_selector("canvas.cornerstone-canvas", timeout=RENDER_SECONDS * 1000)
    spread = 0.0
    for _ in range(RENDER_SECONDS):
        spread = canvas_spread(viewer)
        if spread > 10:
            break
        viewer.wait_for_timeout(1000)
    return spread


def test_with_authentication_on_ohif_shows_the_study_with_the_consoles_credential(
    context: BrowserContext, page: Page, ohif: Path, tmp_path: Path
) -> None:
    reader, loader = "viewer-secret-0123456789", "loader-secret-0123456789"
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path, viewer_dir=ohif, dimse_enabled=False, _env_file=None, auth_enabled=True,
        auth_api_keys=f"viewer:{reader}:read,loader:{loader}:write",
    )
    ct = dicom_files.renewed("CT_small.dcm", PatientName="SECURE^CT", PatientID="VIEW-2")
    with running_archive(settings) as archive:
        stored = httpx.post(
            f"{archive.dicomweb}/studies", content=dicom_files.multipart([dicom_files.part10(ct)]),
            headers={"Authorization": f"Bearer {loader}",
                     "Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'},
        )
        assert stored.status_code == 200, stored.text
        page.goto(f"{archive.base_url}/ui/#/study/{ct.StudyInstanceUID}")
        page.fill("#api-key", reader)
        page.click("#sign-in-key")
        link = page.locator("#open-viewer")
        expect(link).to_have_attribute("href", re.compile(r"&token="), timeout=30_000)
        with context.expect_page() as opened:
            link.click()
        viewer = opened.value
        spread = rendered_spread(viewer)
        assert_no_tour(viewer)
        screenshot(viewer, "viewer-signed-in")
        assert spread > 10, f"OHIF's canvas stayed blank with authentication on (spread {spread:.1f})"
        assert "token=" not in viewer.url  # OHIF took the credential out of the address
