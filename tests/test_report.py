"""`factory report`: a real scripted run on the real Temporal server, reported as text, JSON and one offline
HTML page, which headless Chromium renders and the test checks pixel by pixel."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from darkfactory.contracts import Plan, PlannedTask, RunState, TaskSummary, Usage
from darkfactory.run_report import (
    NODE_H,
    NODE_W,
    STATE_COLOURS,
    RunFacts,
    build_report,
    cost_of,
    layout_dag,
)
from tests.conftest import DEMO, make_repo, request_for, run_to_end
from tests.local_cli import local_env

REPORT = "from darkfactory import worker; from darkfactory.cli.report import app; worker.exit_cleanly(app)"
"""The command group run the way `factory` runs its groups (starter.main), which mounts it."""
UUID = r"[0-9a-f-]{36}"


class Reported:
    def __init__(self, state: RunState, env: dict[str, str]) -> None:
        self.state = state
        self.env = env

    def report(self, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "COLUMNS": str(columns)}
        return subprocess.run(
            [sys.executable, "-c", REPORT, *args], env=env, capture_output=True, text=True, timeout=300, cwd=DEMO
        )

    @property
    def ui_base(self) -> str:
        return f"http://127.0.0.1:{self.env['DARKFACTORY_DEV_UI_PORT']}/namespaces/default/workflows/"


@pytest_asyncio.fixture(scope="module")
async def reported(
    temporal_env: WorkflowEnvironment, factory_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Reported:
    """One scripted demo run to its end (add-slugify fails its tests gate once), shared by the tests here."""
    repo = make_repo(tmp_path_factory.mktemp("report") / "textkit")
    state = await run_to_end(
        temporal_env.client, factory_home, request_for(repo, f"scripted:{DEMO / 'transcript.json'}")
    )
    assert state.succeeded, state.error
    return Reported(state, local_env(temporal_env, factory_home))


# -- text -----------------------------------------------------------------------------------------------


def test_text_report_shows_both_tasks_their_attempts_and_the_failing_tests_gate(reported: Reported) -> None:
    result = reported.report(reported.state.run_id)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "add-slugify" in out and "export-slugify" in out
    assert "export-slugify (merged) <- add-slugify" in out
    first, second = out.index("attempt 1 (round 1): failed"), out.index("attempt 2 (round 1): passed")
    assert re.search(r"FAIL tests: 1 failed", out[first:second])
    assert "feedback given:" in out[second:] and "## Gate `tests` failed" in out[second:]
    assert re.search(rf"{reported.state.usage.total_tokens} tokens \(", out)
    assert "cache-read share 0.0%" in out and "cost none" in out
    assert "Timeline" in out and "attempt 2 of add-slugify" in out


def test_text_report_never_wraps_a_web_ui_link_at_80_columns(reported: Reported) -> None:
    out = reported.report(reported.state.run_id, columns=80).stdout
    run_id = reported.state.run_id
    for workflow_id in (f"run-{run_id}", f"run-{run_id}-task-add-slugify", f"run-{run_id}-task-export-slugify"):
        link = re.escape(reported.ui_base + workflow_id) + rf"/{UUID}/history"
        assert re.search(rf"^\s*(web UI|Web UI): {link}$", out, re.MULTILINE), out


def test_a_run_that_does_not_exist_exits_2_and_says_so(reported: Reported) -> None:
    result = reported.report("no-such-run-here")
    assert result.returncode == 2
    assert "no run with id no-such-run-here" in result.stderr


# -- JSON -----------------------------------------------------------------------------------------------


def test_json_report_has_the_dag_the_attempts_and_the_gates_of_each_attempt(reported: Reported) -> None:
    result = reported.report(reported.state.run_id, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["edges"] == [{"source": "add-slugify", "target": "export-slugify"}]
    tasks = {task["id"]: task for task in report["tasks"]}
    assert tasks["export-slugify"]["depends_on"] == ["add-slugify"] and tasks["export-slugify"]["depth"] == 1
    assert [a["attempt"] for a in tasks["add-slugify"]["attempts"]] == [1, 2]
    assert [a["attempt"] for a in tasks["export-slugify"]["attempts"]] == [1]
    first, second = tasks["add-slugify"]["attempts"]
    assert {g["gate"]: g["passed"] for g in first["gates"]}["tests"] is False
    assert first["passed"] is False and second["passed"] is True
    assert {g["gate"] for g in second["gates"]} >= {"tests", "acceptance", "review"}
    assert first["feedback"] == "" and "## Gate `tests` failed" in second["feedback"]
    assert second["review"]["verdict"] == "approve"
    assert all(a["started"] < a["ended"] for a in (first, second))
    assert report["usage"]["input_tokens"] == reported.state.usage.input_tokens > 0
    assert report["cost"] == {"usd": None, "status": "none", "note": "a scripted run calls no model"}
    assert report["cost_per_merged_task"]["status"] == "none"
    phases = {e["label"] for e in report["timeline"] if e["kind"] == "phase"}
    assert phases >= {"planning", "running"}
    # The demo's tasks merge one after the other, each on the head it branched from: the last one's gates
    # passed on the very tree that ships, so the run does not verify it again (and shows no such phase).
    skipped = all(any("this very tree passed it" in note for note in g.notes) for g in reported.state.final_gates)
    assert ("verifying" in phases) is not skipped
    assert report["link"].startswith(reported.ui_base)


# -- HTML -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def html_report(reported: Reported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    result = reported.report(reported.state.run_id, "--html", str(path))
    assert result.returncode == 0, result.stderr
    return path


def test_html_report_refers_to_nothing_but_the_web_ui(reported: Reported, html_report: Path) -> None:
    page = html_report.read_text()
    assert "<svg" in page and "add-slugify" in page and "export-slugify" in page
    assert not re.search(r"<script|<link|<img|<iframe|@import|src=", page, re.IGNORECASE)
    assert set(re.findall(r"url\(([^)]*)\)", page)) == {"#arrow"}
    urls = re.findall(r"https?://[^\s\"'<>]+", page)
    assert urls and all(url.startswith(reported.ui_base) for url in urls), urls


def test_html_report_renders_the_dag_in_headless_chromium(html_report: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    screenshot = tmp_path / "out.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,1600",
            html_report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
    )
    width, height, pixels = read_png(screenshot)
    assert (width, height) == (1200, 1600)
    counts: dict[tuple[int, int, int], int] = {}
    for pixel in pixels:
        counts[pixel] = counts.get(pixel, 0) + 1
    white = counts.get((255, 255, 255), 0)
    assert white < 0.97 * width * height and len(counts) > 50, "the page is blank"
    fill = STATE_COLOURS["merged"]
    merged = (int(fill[1:3], 16), int(fill[3:5], 16), int(fill[5:7], 16))
    # Two merged nodes (their text takes a little of each); the badges alone come nowhere near this.
    assert counts.get(merged, 0) > 0.7 * 2 * NODE_W * NODE_H, counts.get(merged, 0)


def read_png(path: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB(A), non-interlaced PNG (what Chromium writes) to RGB pixels, with zlib alone."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, compressed = 8, bytearray()
    width = height = channels = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            compressed += body
    raw = zlib.decompress(bytes(compressed))
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for row in range(height):
        start = row * (stride + 1)
        line = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(raw[start], line, previous, channels)
        pixels.extend(zip(line[0::channels], line[1::channels], line[2::channels], strict=True))
        previous = line
    return width, height, pixels


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    if kind == 2:
        line[:] = bytes((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        else:
            corner = previous[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + predictor) & 0xFF


# -- the pure parts -------------------------------------------------------------------------------------


def test_an_unpriced_model_costs_unknown_never_zero() -> None:
    unpriced = Usage(input_tokens=1000, calls=1)
    assert cost_of("claude-not-on-the-list-1", scripted=False, usage=unpriced).text == "unknown"
    partly_priced = Usage(input_tokens=1000, calls=2, priced_calls=1, cost_usd=0.5)
    cost = cost_of("claude-sonnet-5-5", scripted=False, usage=partly_priced)
    assert cost.usd is None and cost.text == "unknown"
    priced = Usage(input_tokens=1000, calls=1, priced_calls=1, cost_usd=0.25)
    assert cost_of("claude-sonnet-5-5", scripted=False, usage=priced).text == "$0.2500"


def test_the_dag_is_layered_by_dependency_depth() -> None:
    graph = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    plan = Plan(
        summary="diamond",
        tasks=[PlannedTask(id=i, title=i, instructions="x", depends_on=deps) for i, deps in graph.items()],
    )
    state = RunState(
        run_id="r",
        repo_path="/r",
        base_branch="main",
        model="m",
        scripted=True,
        phase="running",
        tasks=[TaskSummary(id=i, title=i, state="merged" if i == "a" else "pending") for i in graph],
    )
    facts = RunFacts(state=state, plan=plan, workflow_id="run-r", run_id="x", started=datetime.now(UTC))
    report = build_report(facts)
    assert {t.id: t.depth for t in report.tasks} == {"a": 0, "b": 1, "c": 1, "d": 2}
    layout = layout_dag(report)
    x = {node.id: node.x for node in layout.nodes}
    assert x["a"] < x["b"] == x["c"] < x["d"] and len(layout.paths) == 4
    assert {node.id: node.fill for node in layout.nodes}["a"] == STATE_COLOURS["merged"]
