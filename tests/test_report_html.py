"""The shareable report (--format html) in a real headless Chromium, --at best|final, and seeds as bands
on a real two-seed grid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import prefwatch

from prefwatch.analysis.analyse import analyse
from prefwatch.analysis.peak import At
from prefwatch.ingest.discover import open_path
from prefwatch.report.html import render_html

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_runs" / "tiny-demo"
EVIL = 'dpo-r8 <img src=x onerror="alert(1)"> &amp;'
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("PREFWATCH_REQUIRE_CHROMIUM"):
        pytest.fail("the HTML report test needs chromium (PREFWATCH_REQUIRE_CHROMIUM is set): make browser-deps")
    warnings.warn("HTML report test skipped: no chromium (make browser-deps installs it)", stacklevel=2)
    pytest.skip("no chromium: make browser-deps")


def chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A fresh profile per run; stdout is what --dump-dom prints."""
    profile = tmp_path / f"profile-{name}"
    command = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked for: requests whose network isolation key is the file:// page's.

    The browser's own background requests (update checks, time) carry another key and are not the page's."""
    log = json.loads(net_log.read_text())
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if (
            "url" in params
            and "initiator" in params
            and str(params.get("network_isolation_key", "")).startswith("file:")
        ):
            urls.append(params["url"])
    return urls


def polled(path: Path):  # noqa: ANN201 (a GridSource)
    grid = open_path(path)
    grid.poll()
    return grid


@pytest.fixture
def evil_run(tmp_path: Path) -> Path:
    """The sample grid's real logs, one cell folder renamed to markup."""
    run = tmp_path / "run"
    shutil.copytree(SAMPLE, run)
    (run / "cells" / "dpo-r8").rename(run / "cells" / EVIL)
    return run


def test_html_is_self_contained_and_escapes_what_comes_from_logs(evil_run):
    analysis = analyse(polled(evil_run))
    page = render_html(analysis)
    assert "<img" not in page and "onerror=&quot;alert(1)&quot;" in page and "&amp;amp;" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<script" not in page and "default-src 'none'" in page
    assert page.count("<svg") == len(analysis.cells) and page.count('class="line"') == 4 * len(analysis.cells)
    assert len(page.encode()) < 200_000  # small enough to attach to a pull request
    assert "Verdict" in page and analysis.verdict.headline in page


def test_the_html_report_renders_in_chromium(evil_run, tmp_path):
    out = tmp_path / "report.html"
    written = prefwatch("report", str(evil_run), "--format", "html", "-o", str(out))
    assert written.returncode in (0, 3), written.stderr
    net_log = tmp_path / "net.json"
    dom = chromium(tmp_path, "dom", f"--log-net-log={net_log}", "--dump-dom", out.as_uri()).stdout
    assert dom.count("<svg") == 4, dom[:500]
    assert dom.count("<path") >= 4 * 3  # each cell: train margin (raw, EMA), held-out margin, accuracy
    assert "<img" not in dom and "onerror=" in dom  # the markup in the cell id is text on the page
    assert page_requests(net_log) == []
    shot = tmp_path / "report.png"
    chromium(tmp_path, "shot", "--window-size=1200,2400", f"--screenshot={shot}", out.as_uri())
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200) and float(np.std(pixels)) > 0.05  # drawn, not blank


def test_the_request_detector_sees_what_a_page_fetches(tmp_path):
    """The control for the test above: a page with an outside image is caught fetching it."""
    page = tmp_path / "fetches.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/pixel.png"></body></html>')
    net_log = tmp_path / "net.json"
    chromium(tmp_path, "control", f"--log-net-log={net_log}", "--dump-dom", page.as_uri())
    assert page_requests(net_log) == ["http://127.0.0.1:9/pixel.png"]


def test_the_verdict_says_whether_it_compares_final_or_best_evaluations():
    final = prefwatch("report", str(SAMPLE), "--format", "md").stdout
    best = prefwatch("report", str(SAMPLE), "--format", "md", "--at", "best").stdout
    assert "compares each cell's final held-out evaluation" in final
    assert "compares each cell's best held-out evaluation" in best
    analysis_final = analyse(polled(SAMPLE))
    analysis_best = analyse(polled(SAMPLE), at=At.BEST)
    # The sample grid peaked early: its best evaluations beat its final ones, and the verdict sees it
    # (DPO either way, on other evidence: at their best, SimPO's cells win more pairs than DPO's).
    assert analysis_final.verdict.reasons[0] != analysis_best.verdict.reasons[0]
    assert "does not win more held-out pairs" in analysis_final.verdict.reasons[0]
    assert "simpo-r8 wins 2 more held-out pair(s)" in analysis_best.verdict.reasons[0]
    data = json.loads(prefwatch("report", str(SAMPLE), "--format", "json", "--at", "best").stdout)
    assert data["verdict"]["at"] == "best"
    for cell in data["cells"]:
        assert cell["best"]["heldout_accuracy"] >= cell["review"]["heldout_accuracy"]
