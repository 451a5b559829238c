"""The comments a run posts on the GitHub issue that asked for it: the outcome, and each escalation with
how to answer it. Pure text from the run's state (the run workflow renders them; an activity posts them)."""

from __future__ import annotations

from darkfactory.constants import run_workflow_id
from darkfactory.contracts import EscalationState, RunState

_HEADER = "**darkfactory**"


def outcome_comment(state: RunState) -> str:
    """What the run did: merged where, the pull request, or why nothing shipped."""
    run = f"run `{state.run_id}`"
    if state.succeeded:
        if state.pull_request_url:
            line = f"{_HEADER} {run} opened a pull request: {state.pull_request_url}"
        elif state.ship_mode in ("merge", "push") and state.shipped_sha:
            line = f"{_HEADER} {run} merged `{state.shipped_sha[:12]}` into `{state.shipped_to or state.base_branch}`."
        else:
            line = f"{_HEADER} {run} left its work on branch `{state.shipped_to or state.integration_branch}`."
    elif state.phase == "cancelled":
        line = f"{_HEADER} {run} was cancelled; nothing shipped. Its branches are kept for inspection."
    else:
        line = f"{_HEADER} {run} ended `{state.phase}`; nothing shipped. {state.error}".rstrip()
    tasks = [f"- `{task.id}` {task.state}: {task.reason or task.title}" for task in state.tasks]
    return "\n".join([line, *(["", *tasks] if tasks else [])])


def escalation_comment(run_id: str, task_id: str, escalation: EscalationState) -> str:
    """A task waits for a person: why, until when, and the commands that answer it."""
    deadline = (
        f" If nobody answers by {escalation.deadline:%Y-%m-%d %H:%M} UTC, the policy decides."
        if (escalation.deadline)
        else ""
    )
    workflow_id = f"{run_workflow_id(run_id)}-task-{task_id}"
    return "\n".join(
        [
            f"{_HEADER} run `{run_id}`: task `{task_id}` waits for a person (attempt {escalation.attempt}).",
            "",
            f"> {escalation.reason}",
            "",
            f"Answer with one of:{deadline}",
            "```",
            f"factory approve {run_id} {task_id} --note 'why'",
            f"factory reject {run_id} {task_id} --note 'why'",
            f"factory retry {run_id} {task_id} --note 'what to do differently'",
            "```",
            f"(or `temporal workflow signal --workflow-id {workflow_id} --name approve`)",
        ]
    )
