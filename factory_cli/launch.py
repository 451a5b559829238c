"""Starting a FactoryRun, the one way every trigger does it (`factory run`, schedules, `factory serve`, the
backlog): the workflow id from the run id, reject-duplicate, and the search attributes that find it."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from darkfactory.constants import TASK_QUEUE, run_workflow_id
from darkfactory.contracts import RunRequest
from workflows import FactoryRunWorkflow
from workflows.search_attributes import REPO, STATUS, TRIGGER


def run_search_attributes(request: RunRequest) -> TypedSearchAttributes:
    """What `factory runs` and the web UI filter on, set when the run starts (the workflow keeps the status)."""
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


async def start_factory_run(client: Client, request: RunRequest, task_queue: str = TASK_QUEUE) -> bool:
    """Start the run; False when a run with its id exists already (running or ended), which is left alone.

    A run id names one run forever (reject-duplicate), so a repeated trigger — a redelivered webhook, a
    second label, the same alert again — finds the run it started instead of starting another.
    """
    try:
        await client.start_workflow(
            FactoryRunWorkflow.run,
            request,
            id=run_workflow_id(request.run_id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=run_search_attributes(request),
            static_summary=run_summary(request),
        )
    except WorkflowAlreadyStartedError:
        return False
    return True
