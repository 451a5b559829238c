"""What the tests gate concluded about each failing test, and how that is told to people and to the agent.

A failure is a failure: a test that fails now counts unless it is quarantined by the policy, passes when
re-run alone (flaky), or failed on the base too *and* the change does not affect it (pre-existing). Every
exception is listed, never silent.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from darkfactory.gates.baseline_data import Baseline
from darkfactory.gates.common import MAX_ITEMS, listed_notes
from darkfactory.gates.junit import JUnitCase, PytestRun
from darkfactory.policy import QuarantinedTest, SuiteRules, TaskType

WITNESS_TYPES: frozenset[TaskType] = frozenset({"feature", "bugfix"})
"""Task types that must show a test that fails without the change and passes with it."""


@dataclass(frozen=True)
class Counted:
    """A failing test that counts against the change."""

    case: JUnitCase
    on_base: bool
    """It failed on the base too."""
    why: str
    """Why it counts, in words for the agent."""


@dataclass
class Ledger:
    """Everything the gate learned over its runs, keyed by node id in the tree the suite ran in."""

    flaky: dict[str, JUnitCase] = field(default_factory=dict)
    pre_existing: dict[str, JUnitCase] = field(default_factory=dict)
    quarantined: dict[str, tuple[JUnitCase, QuarantinedTest]] = field(default_factory=dict)
    witnesses: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def decided(self, nodeid: str) -> bool:
        return nodeid in self.flaky or nodeid in self.pre_existing or nodeid in self.quarantined

    def tally(self, run: PytestRun, failed: int = 0) -> str:
        parts = [f"{failed} failed"] if failed else []
        parts.append(f"{run.count('passed')} passed")
        if self.pre_existing:
            count = len(self.pre_existing)
            parts.append(f"{count} pre-existing failure{'s' if count > 1 else ''}")
        if self.quarantined:
            parts.append(f"{len(self.quarantined)} quarantined")
        if self.flaky:
            parts.append(f"{len(self.flaky)} flaky")
        if run.count("skipped"):
            parts.append(f"{run.count('skipped')} skipped")
        return ", ".join(parts)

    def result_notes(self, rules: SuiteRules, shown: Callable[[str], str]) -> list[str]:
        failed_quarantined = {entry.test for _case, entry in self.quarantined.values()}
        return [
            *(
                [f"witness (fails on the base, passes with the change): {', '.join(map(shown, self.witnesses[:5]))}"]
                if self.witnesses
                else []
            ),
            *listed_notes(
                "pre-existing (fails on the base too; the change does not affect it)",
                [_headline(case, shown) for case in self.pre_existing.values()],
            ),
            *listed_notes("flaky (passed when re-run alone)", [_headline(case, shown) for case in self.flaky.values()]),
            *listed_notes(
                "quarantined (ignored by the policy)",
                [
                    f"{entry.test}: {entry.reason}"
                    + (" (failed in this run)" if entry.test in failed_quarantined else "")
                    for entry in rules.quarantine
                ],
            ),
            *self.notes,
        ]


def vanished(
    baseline: Baseline,
    run: PytestRun,
    rules: SuiteRules,
    original: Callable[[str], str],
    moved_files: Collection[str] = (),
) -> list[Counted]:
    """Base tests that did not run now, or were skipped now: whatever made them disappear (a deselecting hook,
    a plugin, code that skips), a test the base ran must run. Tests skipped on the base, quarantined ones and
    those in `moved_files` (test files changed since the base was measured) are not asked for."""
    outcomes = {original(case.nodeid): case.outcome for case in run.cases or []}
    renamed = _renamed_cases(baseline.outcomes, outcomes)
    gone: list[Counted] = []
    for nodeid, before in sorted(baseline.outcomes.items()):
        path = nodeid.split("::", 1)[0]
        if before == "skipped" or "::" not in nodeid or path in moved_files or rules.quarantined(nodeid):
            continue
        now = outcomes.get(nodeid)
        if now is None and nodeid in renamed:
            continue
        if now is None or now == "skipped":
            what = "did not run" if now is None else "was skipped"
            message = f"{what} with your change; it ran on the base ({before} there)"
            gone.append(Counted(JUnitCase(nodeid, "failed", message=message), before != "passed", what))
    return gone


def _renamed_cases(before: Mapping[str, str], now: Mapping[str, str]) -> set[str]:
    """Parametrized base cases whose ids changed between processes, not whether they ran.

    A suite that parametrizes over a set gets its generated ids (`expected14`) in a per-process order (hash
    randomisation; in Python 3.11 even `hash(None)` moves with the address layout), so the base's ids can be
    missing now while the same cases run under other ids. Per test function: when as many cases ran now under
    ids the base never had as the base's cases that are missing, those missing ones were renamed. The test
    files are the base's (a change's own edits to them are judged elsewhere), so the cases are the same ones."""

    def function(nodeid: str) -> str | None:
        return nodeid.split("[", 1)[0] if "[" in nodeid else None

    missing: dict[str, list[str]] = {}
    for nodeid, outcome in before.items():
        name = function(nodeid)
        if name is not None and outcome != "skipped" and nodeid not in now:
            missing.setdefault(name, []).append(nodeid)
    fresh: dict[str, int] = {}
    for nodeid, outcome in now.items():
        name = function(nodeid)
        if name in missing and outcome != "skipped" and nodeid not in before:
            fresh[name] = fresh.get(name, 0) + 1
    return {nodeid for name, ids in missing.items() if fresh.get(name, 0) >= len(ids) for nodeid in ids}


def _headline(case: JUnitCase, shown: Callable[[str], str]) -> str:
    first = next((line for line in case.message.splitlines() if line.strip()), "")
    return f"{shown(case.nodeid)} - {first.strip()[:200]}" if first else shown(case.nodeid)


def failures_feedback(counted: Sequence[Counted], shown: Callable[[str], str]) -> str:
    """Each counting failure: its id, whether it failed on the base, its traceback's end, what it printed."""
    parts: list[str] = []
    if any(item.on_base for item in counted):
        parts.append(
            "Tests that already failed before your change still count when your change affects the code they "
            "run: make them pass."
        )
    seen: set[str] = set()
    listed = 0
    for item in counted:
        name = shown(item.case.nodeid)
        key = name.removesuffix(" (your version of the file)")
        if key in seen:
            continue  # the copy of an edited test file fails the same way as the base's version
        seen.add(key)
        listed += 1
        if listed > MAX_ITEMS:
            continue
        body = (item.case.text or item.case.message).strip()
        lines = [line[:300] for line in body.splitlines()[-15:]]
        section = [f"### {name} ({item.why})", *lines]
        if item.case.stdout:
            section += ["--- captured stdout ---", item.case.stdout]
        if item.case.stderr:
            section += ["--- captured stderr ---", item.case.stderr]
        parts.append("\n".join(section))
    if listed > MAX_ITEMS:
        parts.append(f"... and {listed - MAX_ITEMS} more failing test(s)")
    parts.append("### summary\n" + "\n".join(f"FAILED {shown(item.case.nodeid)}" for item in counted[:20]))
    return "\n\n".join(parts)


def no_witness_feedback(
    task_type: TaskType, still_failing: Sequence[str], toothless: Sequence[str], shown: Callable[[str], str]
) -> str:
    lines = [
        f"A `{task_type}` task must come with a witness: a test that fails without your change and passes with "
        "it. No test does:"
    ]
    if still_failing:
        lines.append(
            "- these tests fail on the base and still fail (your change does not touch the code they run): "
            + ", ".join(shown(nodeid) for nodeid in still_failing[:10])
        )
    if toothless:
        lines.append(
            "- your new tests pass against the code before your change as well, so they show nothing: "
            + ", ".join(shown(nodeid) for nodeid in toothless[:10])
        )
    if not still_failing and not toothless:
        lines.append("- no test that failed on the base passes now, and the change adds no test")
    lines.append(
        "Make a test that fails on the base pass, or add a test that fails without your change (in a new test "
        "file, or as a new test in an existing one) and make it pass."
    )
    return "\n".join(lines)
