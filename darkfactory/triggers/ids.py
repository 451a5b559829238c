"""Run ids per trigger, chosen so that a repeated trigger names the run it already started.

- an issue: `issue-<owner>-<repo>-<digest>-<number>` (the workflow id `run-issue-…` is started reject-duplicate,
  so a redelivered webhook or a second label event starts nothing);
- an alert: `alert-<source>-<key digest>-<window>` (one diagnosis run per alert per dedupe window);
- a schedule tick: the schedule's run id plus the tick's time. Temporal appends the tick's timestamp to the
  schedule action's workflow id (`run-nightly-2026-12-02T03:00:00Z`); a git branch cannot hold `:`, so the
  run's own id spells the time in digits (`nightly-20261202030000`). The two forms map to each other.
"""

from __future__ import annotations

import hashlib
import re

from darkfactory.constants import run_workflow_id
from darkfactory.contracts import slugify_run_id

_TICK_SUFFIX = re.compile(r"-(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$")
_TICK_DIGITS = re.compile(r"-(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$")
SCHEDULE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
"""A schedule's name: its schedule id (`factory-<name>`) and the stem of its ticks' run ids."""
SCHEDULE_ID_PREFIX = "factory-"


def schedule_id(name: str) -> str:
    return f"{SCHEDULE_ID_PREFIX}{name}"


def tick_run_id(workflow_id: str, run_id: str) -> str:
    """The run id of a schedule's tick, from the workflow id Temporal gave it; `run_id` when it is no tick."""
    stem = run_workflow_id(run_id)
    match = _TICK_SUFFIX.search(workflow_id)
    if not workflow_id.startswith(stem + "-") or match is None:
        return run_id
    return f"{run_id}-{''.join(match.groups())}"


def run_id_of_workflow(workflow_id: str) -> str:
    """A run's id from its workflow id (either form of a tick), as `factory runs` shows it."""
    stem = workflow_id.removeprefix("run-")
    match = _TICK_SUFFIX.search(stem)
    if match is None:
        return stem
    return stem[: match.start()] + "-" + "".join(match.groups())


def workflow_id_candidates(run_id: str) -> list[str]:
    """The workflow ids a run id given on the command line may name: the run's own, then a tick's."""
    if run_id.startswith("run-") and _TICK_SUFFIX.search(run_id):
        return [run_id]
    candidates = [run_workflow_id(run_id)]
    match = _TICK_DIGITS.search(run_id)
    if match is not None:
        year, month, day, hour, minute, second = match.groups()
        stem = run_workflow_id(run_id[: match.start()])
        candidates.append(f"{stem}-{year}-{month}-{day}T{hour}:{minute}:{second}Z")
    return candidates


def issue_run_id(full_name: str, number: int) -> str:
    """`issue-<owner>-<repo>-<digest>-<n>`: one run per issue, whatever event or delivery asked for it.

    The digest of the exact name keeps apart what the slug folds together (`acme-x/y` and `acme/x-y`, or
    two long names cut at the same place); the number is never cut off.
    """
    digest = hashlib.sha256(full_name.lower().encode()).hexdigest()[:6]
    return f"issue-{slugify_run_id(full_name)[:32].strip('-')}-{digest}-{number}"


def alert_run_id(source: str, key: str, window: int) -> str:
    """One diagnosis run per alert key (fingerprint or group key) per dedupe window number."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"alert-{source}-{digest}-{window}"
