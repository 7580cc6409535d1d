"""The HTML run report: self-contained, complete, and rendered by a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bulkinfer.cli import main
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus
from tests.fakes import FakeHandler

QUERIES = ["Covid Vaccine", "cheap flights", "used cars", None, "", "\x00"] + [f"query {n}" for n in range(30)]
SECTIONS = (
    "Row funnel",
    "Dead-letter reasons",
    "Quality against the gates",
    "Churn against the previous version",
    "Prompt and output lengths",
    "Throughput over the run",
    "Language mix",
    "Sample of rows",
)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    corpus = write_corpus(root / "queries.parquet", QUERIES)
    argv = ["--task", "synonyms", "--input", str(corpus), "--output", str(root / "table"), "--model", "fake"]
    run([*argv, "--run_id", "r1"], model_handler=FakeHandler())
    run([*argv, "--run_id", "r2", "--full"], model_handler=FakeHandler(answers={"used cars": " second hand cars"}))
    return root / "table"


def test_every_publish_writes_a_report_and_the_command_writes_one_on_demand(table, tmp_path, capsys):
    assert (table / "versions" / "r2" / "report.html").is_file()
    out = tmp_path / "r1.html"
    assert main(["report", "--table", str(table), "--version", "r1", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"table": str(table), "version": "r1", "report": str(out)}
    assert "<h1>synonyms · r1 · " in out.read_text()


def test_report_is_complete_and_self_contained(table):
    page = (table / "versions" / "r2" / "report.html").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page
    assert page.count("<svg") >= 6  # funnel, reasons, quality, two token histograms, languages
    # Nothing to fetch: no scripts, no external stylesheets, images or fonts.
    assert not re.search(r"<script|<link|@import|url\((?!#)|(src|href)=\"(https?:)?//", page)  # url(#id): inside the SVG
    # Churn: the one answer that changed, before and after.
    assert "<td>used cars</td><td>used cars alt, other used cars</td><td>second hand cars</td>" in page
    assert "empty_query" in page and "null_query" in page


def test_unknown_version_is_a_user_error(table, tmp_path, capsys):
    assert main(["report", "--table", str(table), "--version", "nope", "--out", str(tmp_path / "x.html")]) == 2
    assert "has no complete version 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("BULKINFER_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is missing and BULKINFER_REQUIRE_CHROMIUM=1 forbids skipping (make install installs it)")
        pytest.skip("chromium is not installed (make install installs it with apt)")
    return found


def _render(page: Path, screenshot: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Renders ``page`` in headless Chromium into ``screenshot``; returns the run and its console messages."""
    done = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--log-level=0",  # console messages of the page come out as INFO:CONSOLE lines
            "--window-size=1200,2400",
            f"--screenshot={screenshot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders_in_a_headless_browser_without_console_messages(table, tmp_path):
    screenshot = tmp_path / "report.png"
    done, console = _render(table / "versions" / "r2" / "report.html", screenshot)
    assert done.returncode == 0, done.stderr[-2000:]
    assert console == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_the_browser_check_sees_console_errors(tmp_path):
    # The check above can fail: a page that logs an error is caught.
    page = tmp_path / "broken.html"
    page.write_text('<html><body>x<script>console.error("broken page")</script></body></html>')
    _, console = _render(page, tmp_path / "broken.png")
    assert any("broken page" in line for line in console)
