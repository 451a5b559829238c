"""Names defined once: task queues, search attributes, defaults, branch layout."""

from __future__ import annotations

TASK_QUEUE = "darkfactory"
"""The task queue of workflows and git steps; model calls and gates use the same name plus a suffix."""
MODEL_QUEUE_SUFFIX = "-model"
"""Model calls: capped by the provider's rate limits and concurrency, not by cores."""
GATES_QUEUE_SUFFIX = "-gates"
"""Gates (tests, linters): CPU-bound, capped by cores."""
QUEUE_CLASSES = ("workflows", "model", "gates")


def queue_name(base: str, resource_class: str) -> str:
    """The task queue of a resource class, derived from the base queue (so tests can use unique bases)."""
    return {"workflows": base, "model": base + MODEL_QUEUE_SUFFIX, "gates": base + GATES_QUEUE_SUFFIX}[resource_class]


DEFAULT_MODEL = "claude-sonnet-5-5"
"""The Claude model used when `--model` is not given."""

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
DEFAULT_UI_PORT = 8233
DEFAULT_NAMESPACE = "default"

# Search attributes (DESIGN §5): registered on the embedded server and upserted by workflows.
SA_STATUS = "FactoryStatus"
"""Keyword: the run's phase or the task's state."""
SA_NEEDS_REVIEW = "FactoryNeedsReview"
"""Bool: true while a person must answer."""
SA_REPO = "FactoryRepo"
"""Keyword: the target repository's path."""
SA_TRIGGER = "FactoryTrigger"
"""Keyword: what started the run: `cli`, `schedule`, `issue`, `alert` or `backlog` (set when it starts)."""
SEARCH_ATTRIBUTES: dict[str, str] = {
    SA_STATUS: "Keyword",
    SA_NEEDS_REVIEW: "Bool",
    SA_REPO: "Keyword",
    SA_TRIGGER: "Keyword",
}
"""Name -> Temporal indexed value type, as `temporal server start-dev --search-attribute` spells it."""

TASK_ESCALATION_SIGNAL = "task_escalation"
"""The signal a task sends its run when it starts or stops waiting for a person (by name: the two workflow
modules cannot import each other)."""

RUN_SPENT_SIGNAL = "run_spent"
"""The signal a run sends its running tasks when a task ends: what the run has spent, for the run's budget."""

TASK_READY_SIGNAL = "task_ready"
"""The signal a task whose gates passed sends its run, with its result; it then stays open until the run says
how its merge went (the `settled` signal), so its search attributes end with the summary's word (`merged`)."""

SUMMARY_MEMO = "summary"
"""The memo key under which a run keeps its live state (RunState as JSON, without the gates' long texts):
any client reads it, with no worker running to answer a query."""

GIT_AUTHOR_NAME = "darkfactory"
GIT_AUTHOR_EMAIL = "factory@darkfactory.invalid"


def integration_branch(run_id: str) -> str:
    return f"factory/{run_id}/integration"


def task_branch(run_id: str, task_id: str) -> str:
    return f"factory/{run_id}/{task_id}"


def run_workflow_id(run_id: str) -> str:
    return f"run-{run_id}" if not run_id.startswith("run-") else run_id


def task_workflow_id(run_id: str, task_id: str) -> str:
    return f"{run_workflow_id(run_id)}-task-{task_id}"
