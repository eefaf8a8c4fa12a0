"""The console's studies page at scale: time to the first rendered row in a real browser, with N studies held.

Run: `python bench/console.py [--studies 100000] [--loads 15]`.

One SQLite archive is filled with `--studies` studies (4 instance records each, bench/qido.py's `records`, loaded
through the repository's own unit of work as bench/scale.py does; no files, the start-up sweep off). Our server
starts on it (`python -m app serve`, default settings), and Debian's chromium under Playwright (as tests/ui/)
opens `/ui/` in a fresh browser profile for each load: the figure is from navigation start to the first study
row in the table (the page's QIDO-RS study search, its JSON parsed and the rows drawn), and the same for its
searches by patient name prefix and by a date range, opened by their address (`#/studies?PatientName=...`,
`from=...&to=...`), and for the page, the name search and the date search sorted by date, newest first (`sort=StudyDate:desc`, a
click on the date column: QIDO-RS `orderby=-StudyDate,-StudyTime` over all the studies, not one page). p50 and
p90 are recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import our_server, record
from bench.qido import INSTANCES_PER_STUDY, surnames
from bench.scale import grow
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, VIEWPORT

ROW = "#studies tbody tr.study-row"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"p50 {statistics.median(ordered):.0f} ms, p90 {ordered[max(0, int(len(ordered) * 0.9) - 1)]:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=15)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-console-") as work:
        data_dir = Path(work) / "data"
        data_dir.mkdir()
        loading = asyncio.run(grow(data_dir / "index.sqlite3", 0, args.studies * INSTANCES_PER_STUDY))
        print(f"loaded {args.studies} studies in {loading:.0f} s", flush=True)
        with our_server(data_dir, env={"STARTUP_SWEEP": "false"}) as ports, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            base = f"http://127.0.0.1:{ports['http']}/ui/"
            prefix = surnames(random.Random(7))[100][:3]  # a name the records use (bench/scale.py's queries)
            pages = {
                "studies page, first row": base,
                "PatientName=<3 letters>*, first row": base + f"#/studies?PatientName={prefix}*",
                "StudyDate=<one year>, first row": base + "#/studies?from=2015-01-01&to=2015-12-31",
                "studies page sorted by date (newest first), first row": base + "#/studies?sort=StudyDate:desc",
                "PatientName=<3 letters>* sorted by date, first row": (
                    base + f"#/studies?PatientName={prefix}*&sort=StudyDate:desc"
                ),
                "StudyDate=<one year> sorted by date, first row": (
                    base + "#/studies?from=2015-01-01&to=2015-12-31&sort=StudyDate:desc"
                ),
            }
            for name, url in pages.items():
                samples = []
                for _ in range(args.loads + 1):  # the first load warms the server's caches; not counted
                    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
                    page = context.new_page()
                    start = time.perf_counter()
                    page.goto(url)
                    try:
                        page.wait_for_selector(ROW, timeout=60_000)
                    except Exception:
                        page.screenshot(path=str(Path(tempfile.gettempdir()) / "bench-console-failed.png"))
                        raise RuntimeError(f"no study row at {url}: {page.inner_text('main')[:300]!r}") from None
                    samples.append((time.perf_counter() - start) * 1000)
                    shown = page.locator(ROW).count()
                    context.close()
                rows.append({"workload": name, "studies": args.studies, "rows shown": shown,
                             "time to first row": percentiles(samples[1:])})  # fmt: skip
            browser.close()
    record("console", rows, note=f"{args.studies} studies loaded in {loading:.0f} s (not part of the figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
