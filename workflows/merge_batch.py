"""One batch of the merge queue: ready tasks merged in order onto the head, checked once, bisected when red.

The batch's tasks are squash-merged one after another onto the integration head (a conflict sends that task
back at once and the others go on). The integration gates, the whole suite among them, then run once on the
batch's last commit. Green: the head moves past all of them. Red: the first failing prefix is found by
bisection over the batch's commits, each tree's verdict kept so none is checked twice; the task whose merge
turned it red goes back with the failure as feedback, the ones before it merge, the ones after it wait for
the next batch (their combination without the culprit has not been checked). The tests gate re-runs failing
tests alone before it counts them, so a flaky test does not make a batch red.

A batch may be stacked on the one `below` it while that one is still being checked (Zuul's speculative
execution): its tasks merge on top of the lower batch's commits and its check runs at the same time, judged
against the lower batch's tip. Its verdict stands only if the lower batch keeps every merge, so that the head it
was judged against is the head it lands on; otherwise it is discarded and its tasks go back to the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow

from darkfactory.workflows.steps import ActivityRunner

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities.gates import GateActivities
    from darkfactory.activities.workspace import WorkspaceActivities
    from darkfactory.contracts import (
        GateReport,
        GateResult,
        MergeResult,
        MergeTaskInput,
        PlannedTask,
        PreparedRun,
        RestoreBranchInput,
        RunGatesInput,
        RunRequest,
    )
    from darkfactory.contracts.gates import TYPES_NOT_CONFIGURED
    from darkfactory.policy import GateName, Policy

NOT_AT_INTEGRATION: tuple[GateName, ...] = ("scope", "acceptance", "review")
"""Gates judged on each task's own change, not on the integration branch."""

MERGE_CHECK_TASK = "_merge"
"""Worktree name for the merge queue's checks (not a valid task id, so it cannot collide); a batch stacked on
another checks in `_merge.1`, so two checks in flight never share a worktree."""


def integration_gates(policy: Policy) -> list[GateName]:
    return [gate for gate in policy.gates if gate not in NOT_AT_INTEGRATION]


@dataclass(eq=False)
class Ticket:
    """A task whose gates passed, waiting in the merge queue; `problem` is '' once merged, else why not."""

    task: PlannedTask
    base: str
    """The integration head the task's round branched from."""
    sha: str
    gates: list[GateResult]
    """The gates of the task's last attempt."""
    problem: str | None = None
    started: bool = False
    """In a batch being merged: a cancellation waits for the batch to finish."""
    merged_sha: str = ""
    """The integration commit that carries it, once merged."""

    @property
    def approved_past_a_failure(self) -> bool:
        """A person approved it although one of its gates failed: it merges alone, and its check leaves out the
        gates whose failure was approved."""
        return any(not result.passed for result in self.gates)


@dataclass
class Checked:
    """What a batch did: the head it leaves, and the gates that passed on that head (None: not checked there)."""

    head: str
    gates: list[GateResult] | None
    where: str
    requeue: list[Ticket] = field(default_factory=list)
    approved: bool = False
    """The head is a change a person approved past a failing gate (checked by every other integration gate)."""
    kept: int = 0
    """How many of the batch's merges stayed (the ones before a culprit)."""
    discarded: bool = False
    """Stacked on a batch that did not keep all its merges: nothing it found counts, every task goes back."""
    types_whole_run: bool = False
    """Its types gate was judged against the run's base: `gates` holds for everything the run changed."""


class MergeBatch:
    """Merges, checks and, when red, bisects one batch; activities only, the queue keeps the state."""

    def __init__(
        self,
        run_activity: ActivityRunner,
        request: RunRequest,
        prepared: PreparedRun,
        number: int,
        below: MergeBatch | None = None,
        chain_intact: bool = True,
    ) -> None:
        self._run_activity = run_activity
        self._request = request
        self._prepared = prepared
        self._number = number
        self._chain_intact = chain_intact
        self._head = ""
        """The head the batch lands on, which its checks judge against: what they count is what the batch adds
        (a failure already there and unaffected by the batch is not the batch's)."""
        self.below = below
        self.above: MergeBatch | None = None
        self.slot: int = 0 if below is None else 1 - below.slot
        self.tip = ""
        self.merged = False
        """Its merges are done: the integration branch stands at `tip`."""
        self.checking = False
        """Its first check is out and may yet pass (no change a person approved past a failure in it)."""
        self.failed = False
        self.outcome: Checked | None = None

    @property
    def stackable(self) -> bool:
        """A next batch may be merged on top of this one and checked while this one's check runs."""
        below = self.below
        stands = below is None or below.outcome is None or below.outcome.head == self._head
        return self.checking and stands

    async def run(self, head: str, tickets: list[Ticket]) -> Checked:
        """Every ticket ends with its `problem` set ('' merged) or put back in `requeue`, and only once the batch
        is over (a task told of a conflict starts its next round from the head the batch leaves)."""
        self._head = head
        merged: list[tuple[Ticket, str]] = []
        conflicts: list[tuple[Ticket, MergeResult, int]] = []
        tip = head
        for ticket in tickets:
            result = await self._merge(ticket)
            if not result.merged:
                conflicts.append((ticket, result, len(merged)))
                continue
            tip = result.integration_sha
            merged.append((ticket, tip))
        self.tip, self.merged = tip, True
        report = await self._first_check(tip, merged)
        if not await self._stands():
            for ticket in tickets:
                ticket.started = False
            self.outcome = Checked(head, None, "", list(tickets), discarded=True)
            return self.outcome
        checked = Checked(head, None, "") if report is None else await self._checked(head, tip, merged, report)
        for ticket, result, before in conflicts:
            if before > checked.kept:  # it conflicted with a change that did not stay: it may merge after all
                ticket.started = False
                checked.requeue.append(ticket)
            else:
                ticket.problem = _conflict(result)
        self.outcome = checked
        return checked

    async def _first_check(self, tip: str, merged: list[tuple[Ticket, str]]) -> GateReport | None:
        """The integration gates once on the batch's tip (None: nothing merged, nothing to check)."""
        if not merged:
            return None
        approved = self._approved(merged)
        self.checking = not approved
        try:
            return await self._check(tip, self._known_gates(self._head, merged), approved)
        finally:
            self.checking = False

    async def _stands(self) -> bool:
        """Whether the head this batch was judged against is the head it lands on: for a stacked batch, once the
        batch below ends, whether that one kept every merge."""
        below = self.below
        if below is None:
            return True
        await workflow.wait_condition(lambda: below.outcome is not None or below.failed)
        return below.outcome is not None and below.outcome.head == self._head

    def _approved(self, merged: list[tuple[Ticket, str]]) -> set[GateName]:
        """The gates a person approved a lone change past; its check leaves them out (empty: none)."""
        if len(merged) == 1 and merged[0][0].approved_past_a_failure:
            return self._approved_failures(merged[0][0])
        return set()

    async def _checked(self, head: str, tip: str, merged: list[tuple[Ticket, str]], report: GateReport) -> Checked:
        names = ", ".join(ticket.task.id for ticket, _ in merged)
        where = f"the merge queue's check of batch {self._number} ({names})"
        known = self._known_gates(head, merged)
        approved = bool(self._approved(merged))
        if report.passed:
            if not report.results:  # the task's own gates had run every one of them on this very tree
                where = f"task {merged[0][0].task.id}'s gates"
            for ticket, sha in merged:
                ticket.problem, ticket.merged_sha = "", sha
            gates = [*(known or []), *report.results]
            whole = self._types_from_run_base
            return Checked(tip, gates, where, approved=approved, kept=len(merged), types_whole_run=whole)
        return await self._bisect(head, tip, merged, report)

    @staticmethod
    def _approved_failures(ticket: Ticket) -> set[GateName]:
        """The gates a person approved the change past: its check does not run them again (what they found is
        what was approved), it runs every other integration gate."""
        return {result.gate for result in ticket.gates if not result.passed}

    def _known_gates(self, head: str, merged: list[tuple[Ticket, str]]) -> list[GateResult] | None:
        """The integration gates that passed on this very tree in the task's own gates: a batch of one task,
        merged onto the head it branched from (its gates judged the change from there, as the check would; its
        tests count only when the whole suite ran in the commit's own tree)."""
        if len(merged) != 1 or merged[0][0].base != head:
            return None
        found = {result.gate: result for result in merged[0][0].gates}
        known: list[GateResult] = []
        for gate in integration_gates(self._prepared.policy):
            result = found.get(gate)
            if result is None or not result.passed or (gate == "tests" and not result.exact_tree):
                continue
            judged_elsewhere = gate == "types" and result.summary != TYPES_NOT_CONFIGURED
            if judged_elsewhere and head != self._prepared.base_sha and self._types_from_run_base:
                continue  # the task's mypy judged its change from the head; the check judges it from the run's base
            known.append(result)
        return known

    @property
    def _types_from_run_base(self) -> bool:
        """The checks judge the types gate against the run's base: mypy follows imports across files, so a later
        change can break the types of a file an earlier batch changed, which a check judged from the head would
        not look at. Every head then holds for the whole run and nothing is left for the final verification. Not
        once a change approved past a failure merged: what was approved would fail every later check (the final
        verification judges the whole run then)."""
        return self._chain_intact and workflow.patched("types-against-run-base")

    async def _bisect(self, head: str, tip: str, merged: list[tuple[Ticket, str]], failed: GateReport) -> Checked:
        # Invariant: the tree after `good` merges passed (-1: the head), the tree after `bad` merges failed.
        good, bad = -1, len(merged) - 1
        good_gates: list[GateResult] | None = None
        while bad - good > 1:
            middle = (good + bad) // 2
            report = await self._check(merged[middle][1], None)
            if report.passed:
                good, good_gates = middle, report.results
            else:
                bad, failed = middle, report
        culprit = merged[bad][0]
        back_to = merged[good][1] if good >= 0 else head
        await self._run_activity(
            WorkspaceActivities.restore_branch,
            RestoreBranchInput(
                run_id=self._request.run_id,
                repo_path=self._request.repo_path,
                branch=self._prepared.integration_branch,
                sha=back_to,
                expected=await self._branch_tip(tip),
            ),
            self._request.config.timeouts.git_s,
        )
        workflow.logger.info("batch %d: %s broke the integration gates; it goes back", self._number, culprit.task.id)
        culprit.problem = (
            "## Regression\nYour change passed its own checks but broke the integration branch's gates once merged "
            "on top of the current head (the whole test suite runs there); it was not merged. Make the change work "
            "on top of the current code.\n\n" + failed.feedback
        )
        for ticket, sha in merged[:bad]:
            ticket.problem, ticket.merged_sha = "", sha
        requeue = [ticket for ticket, _ in merged[bad + 1 :]]
        for ticket in requeue:
            ticket.started = False
        where = f"the merge queue's check of batch {self._number}"
        gates = good_gates if good >= 0 else None
        return Checked(back_to, gates, where, requeue, kept=good + 1, types_whole_run=self._types_from_run_base)

    async def _branch_tip(self, tip: str) -> str:
        """Where the integration branch stands: at the tip of the batch stacked on this one, once its merges are
        done (reverting to before the culprit takes that batch's merges off too; it will be discarded)."""
        above = self.above
        if above is None:
            return tip
        await workflow.wait_condition(lambda: above.merged or above.failed)
        return above.tip if above.merged else tip

    async def _merge(self, ticket: Ticket) -> MergeResult:
        result: MergeResult = await self._run_activity(
            WorkspaceActivities.merge_task,
            MergeTaskInput(
                run_id=self._request.run_id,
                task_id=ticket.task.id,
                title=ticket.task.title,
                repo_path=self._request.repo_path,
                integration_branch=self._prepared.integration_branch,
                task_sha=ticket.sha,
                commit_time=int(workflow.now().timestamp()),
            ),
            self._request.config.timeouts.git_s,
        )
        return result

    async def _check(
        self, sha: str, known: list[GateResult] | None, approved: set[GateName] | None = None
    ) -> GateReport:
        """The integration gates on one of the batch's trees, judged against the head the batch lands on; gates in
        `known` already passed on this tree and are not run again."""
        policy = self._prepared.policy
        skip = {result.gate for result in known or []} | (approved or set())
        gates = [gate for gate in integration_gates(policy) if gate not in skip]
        if not gates:
            return GateReport(sha=sha, results=[])
        timeouts = self._request.config.timeouts
        report: GateReport = await self._run_activity(
            GateActivities.run_gates,
            RunGatesInput(
                run_id=self._request.run_id,
                task_id=MERGE_CHECK_TASK if self.slot == 0 else f"{MERGE_CHECK_TASK}.{self.slot}",
                attempt=self._number,
                repo_path=self._request.repo_path,
                sha=sha,
                base_sha=self._head,
                config=self._request.config,
                types_base_sha=self._prepared.base_sha if self._types_from_run_base else "",
                policy=policy.model_copy(update={"gates": gates}),
                baseline=self._prepared.baseline,
                purpose="regression",
            ),
            timeouts.gates_s,
            heartbeat_s=max(timeouts.heartbeat_s, 30.0),
        )
        return report


def _conflict(result: MergeResult) -> str:
    return (
        f"## Merge conflict\nWhile you worked, other tasks were merged into the integration branch, and your "
        f"change conflicts with them in: {result.conflict}. Make the change again on top of the current code "
        f"(your workspace now holds it)."
    )
