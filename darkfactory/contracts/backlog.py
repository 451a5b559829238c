"""A repository's backlog: queued specs, the BacklogWorkflow's state, and the view `factory backlog list` reads.

The workflow publishes `BacklogView` in its memo (under `BACKLOG_MEMO`), so the queue can be read with no
worker running. Items carry a whole `RunRequest`, built and validated by the CLI when the item is added.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from darkfactory.contracts.base import Frozen
from darkfactory.contracts.config import RunRequest

BACKLOG_MEMO = "backlog"
"""The memo key holding the backlog's `BacklogView`."""
ITEM_ID_PATTERN = r"^[0-9a-f]{8,32}$"
DEFAULT_PRIORITY = 100
MAX_CONCURRENCY = 32
ItemState = Literal["pending", "queued", "running", "done", "removed"]
"""`pending`: added but not yet seen by a worker (only `factory backlog list` says so, from the history)."""


def backlog_workflow_id(repo_path: str) -> str:
    """One backlog per repository: its workflow id derives from the repository's absolute path."""
    return f"backlog-{hashlib.sha256(repo_path.encode()).hexdigest()[:12]}"


class HoursWindow(Frozen):
    """Whole UTC hours in which runs may start: from `start` (inclusive) to `end` (exclusive), wrapping
    midnight when `end` is not after `start` (22-06 is ten hours of night)."""

    start: int = Field(ge=0, le=23)
    end: int = Field(ge=0, le=24)

    @model_validator(mode="after")
    def _not_empty(self) -> HoursWindow:
        if self.start == self.end:
            raise ValueError(f"the hours window {self.label} is empty; give two different hours, like 22-06")
        return self

    @property
    def label(self) -> str:
        return f"{self.start:02d}-{self.end:02d}"

    def contains(self, moment: datetime) -> bool:
        hour = moment.astimezone(UTC).hour
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end

    def opens_after(self, moment: datetime) -> datetime:
        """The next time the window opens (its start hour) after `moment`."""
        now = moment.astimezone(UTC)
        opening = now.replace(hour=self.start, minute=0, second=0, microsecond=0)
        return opening if opening > now else opening + timedelta(days=1)


class BacklogSettings(Frozen):
    """How the backlog works through its queue; changed by `factory backlog add --concurrency/--hours`."""

    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    """Runs of this backlog running at the same time, at most."""
    hours: HoursWindow | None = None
    """Runs start only inside this UTC window; None: at any hour."""


class BacklogItem(Frozen):
    """A queued spec, as the CLI hands it in: the run it becomes is fixed when it is added."""

    item_id: str = Field(pattern=ITEM_ID_PATTERN)
    """Chosen by the client, so a retried signal carries the same id and is ignored."""
    priority: int = DEFAULT_PRIORITY
    """Lower runs first; equal priorities run in the order they were added."""
    title: str = ""
    """The spec's first line (or its path in the repository), for `factory backlog list`."""
    request: RunRequest


class BacklogAdd(Frozen):
    """The `add` signal: an item, and optionally new settings for the backlog."""

    item: BacklogItem
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    hours: HoursWindow | None = None
    any_hours: bool = False
    """Lift the hours window (`--hours any`)."""

    def applied_to(self, settings: BacklogSettings) -> BacklogSettings:
        changes: dict[str, object] = {}
        if self.concurrency is not None:
            changes["concurrency"] = self.concurrency
        if self.hours is not None or self.any_hours:
            changes["hours"] = self.hours
        return settings.model_copy(update=changes) if changes else settings


class BacklogEntry(Frozen):
    """An item once the backlog holds it."""

    item: BacklogItem
    seq: int
    """Arrival order in this backlog (FIFO within a priority)."""
    added_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = ""
    """How it ended: the run's phase (`shipped`, `failed`, …), or `removed`."""
    error: str = ""

    @property
    def order(self) -> tuple[int, int]:
        return (self.item.priority, self.seq)


class BacklogState(BaseModel):
    """The BacklogWorkflow's whole state, carried across continue-as-new."""

    model_config = ConfigDict(extra="forbid")

    repo_path: str
    settings: BacklogSettings = Field(default_factory=BacklogSettings)
    queued: list[BacklogEntry] = Field(default_factory=list)
    running: list[BacklogEntry] = Field(default_factory=list)
    done: list[BacklogEntry] = Field(default_factory=list)
    """The most recent ended or removed items, newest last."""
    started: list[str] = Field(default_factory=list)
    """Item ids in the order their runs started (the most recent ones)."""
    seen: list[str] = Field(default_factory=list)
    """Item ids ever accepted (the most recent ones): a repeated `add` with one of them is ignored."""
    next_seq: int = 0
    max_running: int = 0
    """The most runs this backlog has had running at once."""


class BacklogInput(Frozen):
    repo_path: str
    settings: BacklogSettings = Field(default_factory=BacklogSettings)
    state: BacklogState | None = None
    """The state carried over by continue-as-new; None for a new backlog."""


class ItemView(Frozen):
    item_id: str
    priority: int
    title: str
    run_id: str
    state: ItemState
    added_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = ""
    error: str = ""


class BacklogView(Frozen):
    """What the backlog publishes in its memo: `queued` in the order the items will start."""

    repo_path: str
    settings: BacklogSettings
    queued: list[ItemView] = Field(default_factory=list)
    running: list[ItemView] = Field(default_factory=list)
    done: list[ItemView] = Field(default_factory=list)
    started: list[str] = Field(default_factory=list)
    max_running: int = 0
    waiting_until: datetime | None = None
    """Set while queued items wait for the hours window: when it opens."""


def item_view(entry: BacklogEntry, state: ItemState) -> ItemView:
    item = entry.item
    return ItemView(
        item_id=item.item_id,
        priority=item.priority,
        title=item.title,
        run_id=item.request.run_id,
        state=state,
        added_at=entry.added_at,
        started_at=entry.started_at,
        ended_at=entry.ended_at,
        outcome=entry.outcome,
        error=entry.error,
    )


def backlog_view(state: BacklogState, waiting_until: datetime | None = None) -> BacklogView:
    return BacklogView(
        repo_path=state.repo_path,
        settings=state.settings,
        queued=[item_view(entry, "queued") for entry in sorted(state.queued, key=lambda e: e.order)],
        running=[item_view(entry, "running") for entry in state.running],
        done=[item_view(entry, "removed" if entry.outcome == "removed" else "done") for entry in state.done],
        started=state.started,
        max_running=state.max_running,
        waiting_until=waiting_until,
    )
