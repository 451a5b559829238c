"""The merge queue's orderings that a real run cannot be made to hit on cue, on the time-skipping server.

A cancel that arrives while a red batch is being bisected, or a conflict in the middle of a batch that is still
checking, depends on which activity is in flight when: with real git and a real suite those windows are
milliseconds wide. Here the real `MergeQueue` runs in a real workflow, and only its activity runner is replaced
at its seam (`ActivityRunner`) by one that answers merges and checks from a script, with durable timers for
their durations, so each ordering happens every time. Everything else about these paths runs for real in
tests/test_verify_once.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from darkfactory.activities.gates import GateActivities
from darkfactory.activities.workspace import WorkspaceActivities
from darkfactory.contracts import GateReport, GateResult, MergeResult, PlannedTask, PreparedRun, RunRequest
from darkfactory.contracts.config import RunConfig
from darkfactory.workflows.merge_queue import MergeQueue
from tests.conftest import time_skipping_server


class ScriptedQueueRunner:
    """Merges make `m-<task>` commits; a check passes unless its tree carries a culprit (`breaks`); `conflicts`
    never merge. Every step takes a durable minute (a check `check_s`), so the workflow's cancel lands mid-batch.
    A branch restore is a compare-and-swap, as in git: from anywhere but `expected` it fails."""

    def __init__(self, breaks: set[str], conflicts: set[str], check_s: float = 60) -> None:
        self.breaks = breaks
        self.conflicts = conflicts
        self.check_s = check_s
        self.trees: dict[str, set[str]] = {"base": set()}
        self.head = "base"
        self.checks: list[dict[str, Any]] = []
        """Each check: its tree's tasks, the worktree it ran in, whether it passed, when it began and ended."""

    async def __call__(self, method: Any, arg: Any, timeout_s: float, **_: Any) -> Any:
        if method is GateActivities.run_gates:
            began = workflow.now().timestamp()
            await workflow.sleep(self.check_s)
            passed = not (self.trees[arg.sha] & self.breaks)
            self.checks.append(
                {
                    "tree": sorted(self.trees[arg.sha]),
                    "sha": arg.sha,
                    "worktree": arg.task_id,
                    "passed": passed,
                    "began": began,
                    "ended": workflow.now().timestamp(),
                }
            )
            return GateReport(sha=arg.sha, results=[GateResult(gate="tests", passed=passed, summary="suite")])
        await workflow.sleep(60)
        if method is WorkspaceActivities.merge_task:
            if arg.task_id in self.conflicts:
                return MergeResult(merged=False, integration_sha=self.head, conflict="a.py")
            sha = f"m-{arg.task_id}-{len(self.trees)}"
            self.trees[sha] = self.trees[self.head] | {arg.task_id}
            self.head = sha
            return MergeResult(merged=True, integration_sha=sha)
        if method is WorkspaceActivities.restore_branch:
            if self.head != arg.expected:
                raise ApplicationError(f"branch at {self.head}, restore expected {arg.expected}", non_retryable=True)
            self.head = arg.sha
            return None
        raise AssertionError(f"unexpected activity {method}")


@workflow.defn(sandboxed=False)
class QueueScenario:
    @workflow.run
    async def run(self, scenario: dict[str, Any]) -> dict[str, Any]:
        runner = ScriptedQueueRunner(set(scenario["breaks"]), set(scenario["conflicts"]), scenario.get("check_s", 60))
        queue = MergeQueue(runner)
        queue.head = "base"
        request = RunRequest(run_id="r1", repo_path="/nowhere", spec="s", config=RunConfig(model="scripted:/x"))
        prepared = PreparedRun(base_sha="base", integration_branch="b", integration_sha="base")
        passed = [GateResult(gate="tests", passed=True, summary="ok")]
        told_merged: list[str] = []
        heads_seen: dict[str, str] = {}

        async def one(task_id: str) -> str:
            if task_id in scenario.get("arrive", {}):
                await workflow.sleep(scenario["arrive"][task_id])
            task = PlannedTask(id=task_id, title=task_id, instructions="x")
            problem = await queue.merge(
                request, task, prepared, "base", f"s-{task_id}", lambda: told_merged.append(task_id), passed
            )
            heads_seen[task_id] = queue.head  # the head a next round would branch from
            return problem[:20]

        jobs = {task_id: asyncio.create_task(one(task_id)) for task_id in scenario["tasks"]}
        await workflow.sleep(scenario.get("cancel_at", 10))  # by default every task is in the first batch
        if scenario["cancel"]:
            for job in jobs.values():
                job.cancel()
        await workflow.wait(list(jobs.values()), timeout=7200)
        ended = {
            task_id: (
                "pending"
                if not job.done()
                else "cancelled"
                if job.cancelled()
                else f"failed: {job.exception()}"
                if job.exception()
                else job.result()
            )
            for task_id, job in jobs.items()
        }
        return {
            "ended": ended,
            "head": queue.head,
            "told_merged": told_merged,
            "heads_seen": heads_seen,
            "merged_as": queue.merged_as,
            "checks": runner.checks,
            "trees": {sha: sorted(tree) for sha, tree in runner.trees.items()},
            "branch": runner.head,
        }


async def scenario(**given: Any) -> dict[str, Any]:
    async with time_skipping_server() as env:
        queue = f"races-{uuid.uuid4().hex}"
        async with Worker(
            env.client, task_queue=queue, workflows=[QueueScenario], workflow_runner=UnsandboxedWorkflowRunner()
        ):
            result: dict[str, Any] = await env.client.execute_workflow(
                QueueScenario.run, given, id=f"races-{uuid.uuid4().hex}", task_queue=queue
            )
            return result


async def test_a_cancel_while_a_red_batch_is_bisected_ends_every_task_and_keeps_what_merged() -> None:
    # t2 breaks the batch [t1, t2, t3]; the run is cancelled while it is being checked. Bisection keeps t1, sends
    # t2 back and puts t3 back in the queue: t3's task, cancelled, must end instead of waiting for a next batch.
    result = await scenario(tasks=["t1", "t2", "t3"], breaks=["t2"], conflicts=[], cancel=True)

    assert result["ended"] == {"t1": "cancelled", "t2": "cancelled", "t3": "cancelled"}
    assert result["told_merged"] == ["t1"] and result["head"] == result["merged_as"]["t1"]


async def test_a_conflict_mid_batch_is_told_only_once_the_head_has_moved() -> None:
    # t2 conflicts while t1 and t3 merge: its next round must start from the head with t1 and t3 in it.
    result = await scenario(tasks=["t1", "t2", "t3"], breaks=[], conflicts=["t2"], cancel=False)

    assert result["ended"]["t2"].startswith("## Merge conflict")
    assert result["ended"]["t1"] == result["ended"]["t3"] == ""
    assert result["heads_seen"]["t2"] == result["head"] == result["merged_as"]["t3"]


async def test_a_red_batch_keeps_the_tasks_before_the_culprit_and_merges_the_ones_after_it_next() -> None:
    result = await scenario(tasks=["t1", "t2", "t3"], breaks=["t2"], conflicts=[], cancel=False)

    assert result["ended"]["t1"] == "" and result["ended"]["t3"] == ""
    assert result["ended"]["t2"].startswith("## Regression")
    assert result["heads_seen"]["t2"] == result["merged_as"]["t1"]  # t2's next round starts with t1 merged
    assert result["head"] == result["merged_as"]["t3"]


# Stacked batches: t1's check takes 10 minutes; t2 is ready 2 minutes in, while it runs.
STACKED = {"tasks": ["t1", "t2"], "arrive": {"t2": 120}, "check_s": 600, "conflicts": [], "cancel": False}


async def test_a_batch_ready_during_a_check_is_checked_at_the_same_time_on_top_of_it() -> None:
    result = await scenario(**STACKED, breaks=[])

    first, second = result["checks"]
    assert first["tree"] == ["t1"] and second["tree"] == ["t1", "t2"]
    assert second["began"] < first["ended"]  # at the same time, in another worktree
    assert {first["worktree"], second["worktree"]} == {"_merge", "_merge.1"}
    assert result["ended"] == {"t1": "", "t2": ""}
    assert result["head"] == result["branch"] == result["merged_as"]["t2"] == second["sha"]


async def test_a_batch_stacked_on_a_red_one_is_checked_again_without_the_culprit() -> None:
    result = await scenario(**STACKED, breaks=["t1"])

    assert result["ended"]["t1"].startswith("## Regression") and result["ended"]["t2"] == ""
    assert [check["tree"] for check in result["checks"]] == [["t1"], ["t1", "t2"], ["t2"]]
    # What t2's check on top of the culprit found does not count: the head is the tree checked without it.
    last = result["checks"][-1]
    assert last["passed"] and result["head"] == result["branch"] == last["sha"]
    assert result["trees"][result["head"]] == ["t2"]


async def test_a_red_batch_stacked_on_a_green_one_sends_back_only_its_culprit() -> None:
    result = await scenario(**STACKED, breaks=["t2"])

    assert result["ended"]["t1"] == "" and result["ended"]["t2"].startswith("## Regression")
    assert result["head"] == result["branch"] == result["merged_as"]["t1"]
    assert result["heads_seen"]["t2"] == result["merged_as"]["t1"]  # its next round starts with t1 merged


async def test_a_cancel_while_two_batches_are_checked_keeps_the_head_on_a_checked_tree() -> None:
    result = await scenario(**{**STACKED, "cancel": True, "cancel_at": 300}, breaks=["t1"])

    assert result["ended"] == {"t1": "cancelled", "t2": "cancelled"}
    assert result["told_merged"] == [] and result["head"] == result["branch"] == "base"
