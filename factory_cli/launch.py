"""Starting a FactoryRun, the one way every trigger does it (`factory run`, schedules, `factory serve`, the
backlog): the workflow id from the run id, reject-duplicate, the search attributes that find it, and the
request's fingerprint in its memo, so a later request under the same id can be told apart from a repeat."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from darkfactory.constants import TASK_QUEUE, run_workflow_id
from darkfactory.contracts import RunRequest

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.common import TypedSearchAttributes

REQUEST_MEMO = "request"
"""Memo key of what the run was asked to do: {"repo", "base", "spec_sha256"} (`request_fingerprint`)."""


def run_search_attributes(request: RunRequest) -> TypedSearchAttributes:
    """What `factory runs` and the web UI filter on, set when the run starts (the workflow keeps the status)."""
    from temporalio.common import SearchAttributePair, TypedSearchAttributes

    from darkfactory.workflows.search_attributes import REPO, STATUS, TRIGGER

    return TypedSearchAttributes(
        [
            SearchAttributePair(REPO, request.repo_path),
            SearchAttributePair(STATUS, "preparing"),
            SearchAttributePair(TRIGGER, request.config.trigger),
        ]
    )


def run_summary(request: RunRequest) -> str:
    """The run's static summary in the web UI: the trigger, the repository and what the spec asks."""
    first_line = next((line.strip("# ").strip() for line in request.spec.splitlines() if line.strip()), "")
    asks = first_line or f"the spec in {request.spec_path}"
    return f"{request.config.trigger} · {request.repo_path} · {asks}"[:200]


def request_fingerprint(request: RunRequest) -> dict[str, str]:
    """What makes two requests the same run: the repository, the base branch and the spec (its text as
    cleaned, or the path of a spec file in the repository). Model, ship mode and limits may differ."""
    spec = request.spec if request.spec_path is None else f"spec_path:{request.spec_path}"
    return {
        "repo": request.repo_path,
        "base": request.base_branch,
        "spec_sha256": hashlib.sha256(spec.encode()).hexdigest(),
    }


async def start_factory_run(client: Client, request: RunRequest, task_queue: str = TASK_QUEUE) -> bool:
    """Start the run; False when a run with its id exists already (running or ended), which is left alone.

    A run id names one run forever (reject-duplicate), so a repeated trigger — a redelivered webhook, a
    second label, the same alert again — finds the run it started instead of starting another.
    """
    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from darkfactory.workflows import FactoryRunWorkflow

    try:
        await client.start_workflow(
            FactoryRunWorkflow.run,
            request,
            id=run_workflow_id(request.run_id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=run_search_attributes(request),
            static_summary=run_summary(request),
            memo={REQUEST_MEMO: request_fingerprint(request)},
        )
    except WorkflowAlreadyStartedError:
        return False
    return True


async def conflict_with_existing(client: Client, request: RunRequest) -> str | None:
    """Why `request` cannot be the run that already has its id (None: no such run, or the same request).

    The existing run's fingerprint comes from its memo; a run started before the memo held one is read from
    its start event's input instead.
    """
    from temporalio.service import RPCError, RPCStatusCode

    handle = client.get_workflow_handle(run_workflow_id(request.run_id))
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    existing: dict[str, str] | None = await description.memo_value(REQUEST_MEMO, None, type_hint=dict[str, str])
    if existing is None:
        async for event in handle.fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            try:
                [started] = await client.data_converter.decode(payloads, [RunRequest])
            except Exception:  # an input this version cannot read: nothing to compare, as before
                return None
            existing = request_fingerprint(started)
            break
    if existing is None:
        return None
    wanted = request_fingerprint(request)
    differences = [
        f"{label} {existing.get(key)}, not {wanted[key]}"
        for key, label in (("repo", "repository"), ("base", "base branch"))
        if existing.get(key) != wanted[key]
    ]
    if existing.get("spec_sha256") != wanted["spec_sha256"]:
        was = str(existing.get("spec_sha256"))[:12]
        differences.append(f"a different spec (sha256 {was}…, this one {wanted['spec_sha256'][:12]}…)")
    if not differences:
        return None
    return (
        f"run {request.run_id} already exists with {'; '.join(differences)}; a run id names one request, so "
        f"nothing was started: give another --run-id (or none), or `factory watch {request.run_id}` to follow it"
    )
