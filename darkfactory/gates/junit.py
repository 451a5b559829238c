"""pytest run sandboxed in the target's environment, its results read back from a JUnit XML report.

The report is written where the code under test can write too, so it is read without following symlinks,
with a size cap, and refused if it carries a DOCTYPE or entities.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from darkfactory.gates.common import budget, is_regular, read_regular_file
from darkfactory.gates.context import GateContext
from darkfactory.sandbox import CommandResult, run_command

PYTEST_NO_TESTS = 5
CAPTURE_LIMIT = 1500
"""Characters of a test's captured stdout (and of its stderr) kept for feedback."""
REPORT_LIMIT = 32 << 20
"""Bytes of a JUnit report the host reads back; a bigger one counts as unreadable."""


Outcome = Literal["passed", "failed", "error", "skipped"]


@dataclass(frozen=True)
class JUnitCase:
    """One test's result from a JUnit report."""

    nodeid: str
    outcome: Outcome
    message: str = ""
    text: str = ""
    """The failure's traceback in the run's `--tb` style (test source included: never for held-out tests)."""
    stdout: str = ""
    """What the test printed (captured by pytest), when the run asked for it; bounded."""
    stderr: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "error")

    @property
    def file(self) -> str:
        return self.nodeid.split("::", 1)[0]

    @property
    def headline(self) -> str:
        first = next((line for line in self.message.splitlines() if line.strip()), "")
        return f"{self.nodeid} - {first.strip()[:200]}" if first else self.nodeid


def parse_junit(data: bytes, resolve: Callable[[str, str], str]) -> list[JUnitCase] | None:
    """Test cases from a JUnit XML report; None when it is not one. `resolve(classname, name)` gives node ids."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return None  # pytest never writes these; entity tricks are all they could be for
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return None
    cases: list[JUnitCase] = []
    for testcase in root.iter("testcase"):
        outcome: Outcome = "passed"
        message = text = ""
        captured = {"system-out": "", "system-err": ""}
        for child in testcase:
            if child.tag in captured:
                captured[child.tag] = _bounded_tail(child.text or "")
            elif child.tag in ("failure", "error") and outcome not in ("failed", "error"):
                # A test can fail and then error in teardown: the first problem is the one to show.
                outcome = "failed" if child.tag == "failure" else "error"
                message, text = child.get("message", ""), child.text or ""
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        nodeid = resolve(testcase.get("classname", ""), testcase.get("name", ""))
        cases.append(JUnitCase(nodeid, outcome, message, text, captured["system-out"], captured["system-err"]))
    return cases


_CAPTURE_BANNER = re.compile(r"^-+ Captured \w+(?: \w+)? -+$", re.MULTILINE)


def _bounded_tail(text: str) -> str:
    # The end of the output is where a failing helper prints what it expected and what it got.
    text = _CAPTURE_BANNER.sub("", text).strip("\n")
    return text if len(text) <= CAPTURE_LIMIT else "[...]\n" + text[-CAPTURE_LIMIT:]


def nodeid_resolver(root: Path, *, drop_prefix: bool = False) -> Callable[[str, str], str]:
    """Turns JUnit (classname, name) back into a pytest node id relative to `root`.

    pytest writes `classname` as the node id's path with `/` as `.` and `.py` dropped, followed by any
    classes; the file is the longest prefix that exists. A collection error has no classname and the
    module's dotted path as its name. `drop_prefix` also tries dropping leading parts (tests outside the
    rootdir get ids relative to some other directory).
    """

    def resolve(classname: str, name: str) -> str:
        parts, tail = (classname.split("."), [name]) if classname else (name.split("."), [])
        for start in range(len(parts) if drop_prefix else 1):
            for end in range(len(parts), start, -1):
                candidate = "/".join(parts[start:end]) + ".py"
                if all(parts[start:end]) and is_regular(root, candidate):
                    return "::".join([candidate, *parts[end:], *tail])
        return "::".join([classname, name]) if classname else name

    return resolve


@dataclass(frozen=True)
class PytestRun:
    result: CommandResult
    cases: list[JUnitCase] | None
    """None: no readable JUnit report (pytest crashed, or the file was tampered with)."""

    @property
    def failing(self) -> list[JUnitCase]:
        return [case for case in self.cases or [] if case.failed]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for case in self.cases or [] if case.outcome == outcome)


def run_pytest(
    ctx: GateContext,
    tree: Path,
    argv: Sequence[str],
    scratch: Path,
    label: str,
    *,
    resolve: Callable[[str, str], str] | None = None,
    readonly: Sequence[Path] = (),
    capture: bool = False,
    extra_path: Sequence[Path] = (),
) -> PytestRun:
    """pytest in `tree`, sandboxed, in the target's environment, with a JUnit report read back safely.

    `capture`: failing tests' captured stdout and stderr go into the report (passing tests' never do).
    `extra_path` goes on PYTHONPATH after the tree: the factory's own tools for this run only.
    """
    report = _report_path(scratch, label)
    python_path = [*source_roots(tree), *(str(path) for path in extra_path)]
    logging = ["-o", "junit_logging=no"]
    if capture:
        logging = ["-o", "junit_logging=out-err", "-o", "junit_log_passing_tests=false"]
    result = run_command(
        [*argv, f"--junitxml={report}", *logging, "--continue-on-collection-errors"],
        cwd=tree,
        env={"PYTHONPATH": ":".join(python_path), "VIRTUAL_ENV": str(ctx.env.root)},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=[*ctx.env.readonly_paths, *readonly],
        writable_paths=[scratch],
        timeout_s=budget(ctx),
        on_tick=ctx.on_tick,
    )
    data = read_regular_file(report, REPORT_LIMIT)
    cases = None if data is None else parse_junit(data, resolve or nodeid_resolver(tree))
    return PytestRun(result, cases)


def source_roots(tree: Path) -> list[str]:
    """What goes on PYTHONPATH for a tree: `src/` first when it has one (a src layout), then the tree."""
    return [str(tree / "src"), str(tree)] if (tree / "src").is_dir() else [str(tree)]


def _report_path(scratch: Path, label: str) -> Path:
    # A fresh, unguessable name: nothing the code under test planted earlier can sit there.
    return scratch / f"{label}-{uuid.uuid4().hex[:12]}.xml"
