"""Whether any worker serves a run's task queues, and what to say when none does.

A run waits, durably and silently, until a worker polls its queues: the run's own (workflows and git
steps) and the `-model` and `-gates` queues derived from it (darkfactory/constants.py `queue_name`,
workflows/steps.py). `DescribeTaskQueue` lists the pollers the server has seen; it keeps listing a worker
for minutes after it stopped, so a poller counts only while it polled recently and, when its identity
(the SDK's `pid@host`) names this machine, while that process is alive.
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from darkfactory.constants import DEFAULT_NAMESPACE, QUEUE_CLASSES, queue_name

if TYPE_CHECKING:
    from rich.console import Console
    from temporalio.api.taskqueue.v1 import PollerInfo
    from temporalio.client import Client

CHECKS = 5
CHECK_EVERY_S = 1.0
"""A worker starting at the same time as the run polls within a second or two: a few checks, not a sleep."""
STALE_AFTER = timedelta(seconds=90)
"""A live worker polls again at least every ~70 s (the long poll's timeout); older entries are gone workers."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _live(poller: PollerInfo, now: datetime) -> bool:
    if poller.HasField("last_access_time") and now - poller.last_access_time.ToDatetime(tzinfo=UTC) > STALE_AFTER:
        return False
    pid, _, host = poller.identity.partition("@")
    if host == socket.gethostname() and pid.isdigit():
        return _pid_alive(int(pid))
    return True


async def unserved_queues(client: Client, task_queue: str) -> list[str]:
    """The run's queues (for `task_queue`) that no live worker polls; a queue the server will not describe
    (permissions, an old server) counts as served, so nothing is claimed that was not seen."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.service import RPCError

    missing: list[str] = []
    for resource_class in QUEUE_CLASSES:
        name = queue_name(task_queue, resource_class)
        kind = (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
            if resource_class == "workflows"
            else TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
        )
        request = DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=name), task_queue_type=kind
        )
        try:
            response = await client.workflow_service.describe_task_queue(request)
        except RPCError:
            continue
        now = datetime.now(UTC)
        if not any(_live(poller, now) for poller in response.pollers):
            missing.append(name)
    return missing


def worker_command(client: Client, task_queue: str, missing: list[str], *, remote: bool) -> str:
    """The command that starts a worker for the `missing` queues of the run on `task_queue`."""
    parts = []
    if remote:
        parts.append(f"TEMPORAL_ADDRESS={client.service_client.config.target_host}")
        if client.namespace != DEFAULT_NAMESPACE:
            parts.append(f"TEMPORAL_NAMESPACE={client.namespace}")
    parts.append(f"factory-worker --task-queue {task_queue}")
    classes = [c for c in QUEUE_CLASSES if queue_name(task_queue, c) in missing]
    if classes != list(QUEUE_CLASSES):
        parts.append(f"--serve {','.join(classes)}")
    return " ".join(parts)


async def warn_if_unserved(client: Client, task_queue: str, console: Console, *, remote: bool = True) -> list[str]:
    """Check a few times over a few seconds; when some queue still has no worker, print a warning naming the
    queues and the command that serves them. Returns the queues still unserved ([]: all served)."""
    missing: list[str] = []
    for check in range(CHECKS):
        missing = await unserved_queues(client, task_queue)
        if not missing:
            return []
        if check < CHECKS - 1:
            await asyncio.sleep(CHECK_EVERY_S)
    console.print(
        f"warning: no worker polls task queue{'s' if len(missing) > 1 else ''} {', '.join(missing)}, so the run "
        f"will not move until one does. Start one: {worker_command(client, task_queue, missing, remote=remote)}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return missing
