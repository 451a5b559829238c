"""The gate activities: measure the run's base once, check held-out tests on a task's base, run the gates.

Each checks out the commits it needs as worktrees (caches of a sha), sets up the target's environment and
hands plain inputs to the domain library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from pydantic import ValidationError
from temporalio import activity

from darkfactory import workspace
from darkfactory.activities.context import heartbeat_ticker
from darkfactory.blobs import BlobStore
from darkfactory.contracts import (
    AcceptanceCheck,
    BaselineSummary,
    BlobRef,
    CheckAcceptanceInput,
    GateReport,
    GateResult,
    MeasureBaseInput,
    RunConfig,
    RunGatesInput,
)
from darkfactory.gates import DEFAULT_TEST_COMMAND, GATES, GateContext, run_gates
from darkfactory.gates.acceptance import bite_on_base
from darkfactory.gates.baseline import measure_base
from darkfactory.gates.baseline_data import Baseline
from darkfactory.policy import Policy
from darkfactory.sandbox import worker_secret_values
from darkfactory.settings import FactorySettings
from darkfactory.target_env import TargetEnv, TargetEnvError, ensure_target_env
from darkfactory.untrusted import for_model

log = structlog.get_logger(__name__)
BASELINE_FORMAT = 2
"""Part of a measurement's cache key: bump it when what a measurement records changes."""


def _commands(config: RunConfig, policy: Policy) -> tuple[list[list[str]] | None, list[str]]:
    """(setup commands, test command): the run's overrides, else the policy's, else the defaults."""
    setup = config.setup_commands if config.setup_commands is not None else policy.commands.setup
    return setup, config.test_command or policy.commands.test or list(DEFAULT_TEST_COMMAND)


def _redacted(report: GateReport) -> GateReport:
    """Gate output quotes the repository (test failures, findings): it goes to the model and into history only
    with credential-shaped strings replaced."""
    known = worker_secret_values()

    def clean(text: str) -> str:
        return for_model(text, known)

    results = [
        result.model_copy(
            update={
                "summary": clean(result.summary),
                "feedback": clean(result.feedback),
                "notes": [clean(note) for note in result.notes],
            }
        )
        for result in report.results
    ]
    return report.model_copy(update={"results": results})


class GateActivities:
    def __init__(self, settings: FactorySettings, blobs: BlobStore) -> None:
        self._settings = settings
        self._blobs = blobs

    def _worktree(self, run_id: str, name: str, repo_path: str, sha: str) -> Path:
        return workspace.ensure_worktree(repo_path, self._settings.worktrees_dir / run_id / name, sha)

    @activity.defn
    def measure_base(self, input: MeasureBaseInput) -> BaselineSummary:
        """The base commit's suite, once per base tree and test command: failing tests and per-test coverage."""
        tick = heartbeat_ticker()
        worktree = self._worktree(input.run_id, "_base", input.repo_path, input.base_sha)
        setup, test_command = _commands(input.config, input.policy)
        try:
            env = ensure_target_env(worktree, self._settings.envs_dir, setup, on_tick=tick)
        except TargetEnvError as exc:
            note = f"the base's test environment could not be set up, so every failure counts: {str(exc)[-500:]}"
            return BaselineSummary(base_sha=input.base_sha, notes=[note])
        tree = workspace.GitRun(Path(input.repo_path))("rev-parse", f"{input.base_sha}^{{tree}}")
        key = hashlib.sha256(json.dumps([BASELINE_FORMAT, tree, test_command, env.fingerprint]).encode()).hexdigest()
        cached = self._settings.baselines_dir / f"{key[:32]}.json"
        if cached.exists():
            try:
                found = BaselineSummary.model_validate_json(cached.read_text())
                return found.model_copy(update={"base_sha": input.base_sha, "cached": True})
            except (OSError, ValidationError):
                log.warning("baseline_cache_unreadable", path=str(cached))
        with tempfile.TemporaryDirectory(prefix="factory-base-") as scratch:
            ctx = self._one_commit(worktree, input.base_sha, env, test_command, input.config, tick)
            ctx = dataclasses.replace(ctx, repo_path=input.repo_path, policy=input.policy)
            baseline, output = measure_base(ctx, Path(scratch))
        summary = baseline.summary(self._blobs.put_json(baseline.model_dump(mode="json"))).model_copy(
            update={"details_ref": self._blobs.put_text(output)}
        )
        self._settings.baselines_dir.mkdir(parents=True, exist_ok=True)
        staging = cached.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(summary.model_dump_json())
        os.replace(staging, cached)  # whole or not at all: a concurrent measurement writes the same content
        log.info(
            "base_measured",
            failed=summary.failed,
            passed=summary.passed,
            coverage=summary.coverage,
            duration_s=summary.duration_s,
        )
        return summary

    @activity.defn
    def check_acceptance(self, input: CheckAcceptanceInput) -> AcceptanceCheck:
        """Run the held-out tests against the task's base: only those that fail there can gate the task."""
        tick = heartbeat_ticker()
        worktree = self._worktree(input.run_id, f"{input.task_id}.base", input.repo_path, input.base_sha)
        setup, test_command = _commands(input.config, input.policy)
        try:
            env = ensure_target_env(worktree, self._settings.envs_dir, setup, on_tick=tick)
        except TargetEnvError as exc:
            return AcceptanceCheck(problem=f"the base's test environment could not be set up: {str(exc)[-300:]}")
        with tempfile.TemporaryDirectory(prefix="factory-acceptance-") as scratch:
            (Path(scratch) / "reports").mkdir()
            ctx = dataclasses.replace(
                self._one_commit(worktree, input.base_sha, env, test_command, input.config, tick),
                acceptance_dir=self._materialise_acceptance(input.files_ref, Path(scratch)),
                scratch=Path(scratch) / "reports",
            )
            biting, toothless, problem = bite_on_base(ctx)
        return AcceptanceCheck(biting=biting, toothless=toothless, problem=problem)

    @activity.defn
    def run_gates(self, input: RunGatesInput) -> GateReport:
        tick = heartbeat_ticker()
        root = self._settings.worktrees_dir / input.run_id
        worktree = workspace.ensure_worktree(input.repo_path, root / input.task_id, input.sha)
        base_worktree = workspace.ensure_worktree(input.repo_path, root / f"{input.task_id}.base", input.base_sha)
        changed = workspace.changed_paths(input.repo_path, input.base_sha, input.sha)
        policy = input.policy
        setup, test_command = _commands(input.config, policy)
        try:
            env = ensure_target_env(worktree, self._settings.envs_dir, setup, on_tick=tick)
        except TargetEnvError as exc:
            return self._no_environment(input, exc)
        with tempfile.TemporaryDirectory(prefix="factory-gates-") as scratch:
            (Path(scratch) / "reports").mkdir()
            acceptance_dir = (
                self._materialise_acceptance(input.acceptance_ref, Path(scratch)) if input.acceptance_ref else None
            )
            ctx = GateContext(
                worktree=worktree,
                sha=input.sha,
                changed=changed,
                env=env,
                blobs=self._blobs,
                test_command=test_command,
                timeout_s=max(input.config.timeouts.gates_s - 60.0, 30.0),
                on_tick=tick,
                gates=[gate for gate in policy.gates if gate in GATES],
                repo_path=input.repo_path,
                base_sha=input.base_sha,
                policy=policy,
                task_type=input.task_type,
                base_worktree=base_worktree,
                acceptance_dir=acceptance_dir,
                secret_values=worker_secret_values(),
                scratch=Path(scratch) / "reports",
                purpose=input.purpose,
                baseline=self._baseline(input.baseline),
                trees_dir=root / f"{input.task_id}.trees",
                acceptance_selection=input.acceptance_selection,
                findings_cache=self._settings.home / "cache" / "base-findings",
            )
            report = self._judged(ctx, input, root)
        report = _redacted(report)
        for result in report.results:
            log.info(
                "gate",
                gate=result.gate,
                passed=result.passed,
                summary=result.summary,
                needs_approval=result.needs_approval,
                duration_s=result.duration_s,
            )
        return report

    def _judged(self, ctx: GateContext, input: RunGatesInput, root: Path) -> GateReport:
        """The gates in policy order, cheapest first, stopping at the first failure; with `types_base_sha`, the
        types gate alone is judged against that older base (its changed files and its worktree), all within the
        one deadline."""
        older = input.types_base_sha
        if not older or older == input.base_sha or "types" not in ctx.gates:
            return run_gates(ctx)
        at = ctx.gates.index("types")
        types_ctx = dataclasses.replace(
            ctx,
            gates=["types"],
            base_sha=older,
            changed=workspace.changed_paths(input.repo_path, older, input.sha),
            base_worktree=workspace.ensure_worktree(input.repo_path, root / f"{input.task_id}.runbase", older),
        )
        parts = [
            dataclasses.replace(ctx, gates=ctx.gates[:at]),
            types_ctx,
            dataclasses.replace(ctx, gates=ctx.gates[at + 1 :]),
        ]
        started = time.monotonic()
        results: list[GateResult] = []
        for part in parts:
            if not part.gates:
                continue
            report = run_gates(
                dataclasses.replace(part, timeout_s=max(ctx.timeout_s - (time.monotonic() - started), 30.0))
            )
            results.extend(report.results)
            if not report.passed:
                break
        return GateReport(sha=input.sha, results=results)

    def _one_commit(
        self,
        worktree: Path,
        sha: str,
        env: TargetEnv,
        test_command: list[str],
        config: RunConfig,
        tick: Callable[[], None],
    ) -> GateContext:
        """What running tests on one commit needs, with no change to judge (a base, measured or checked)."""
        return GateContext(
            worktree=worktree,
            sha=sha,
            changed=[],
            env=env,
            blobs=self._blobs,
            test_command=test_command,
            timeout_s=max(config.timeouts.gates_s - 60.0, 30.0),
            on_tick=tick,
            base_sha=sha,
        )

    def _baseline(self, summary: BaselineSummary | None) -> Baseline | None:
        if summary is None or summary.ref is None:
            return None
        measured = Baseline.model_validate(self._blobs.get_json(summary.ref))
        # A measurement is cached by tree: it may have been made on another commit (another repository, even)
        # with the same tree. The commit that matters here is this run's.
        return measured.model_copy(update={"base_sha": summary.base_sha})

    def _no_environment(self, input: RunGatesInput, exc: TargetEnvError) -> GateReport:
        failed = GateResult(
            gate="tests",
            passed=False,
            summary="the test environment could not be set up",
            feedback=str(exc)[-3000:],
            details_ref=self._blobs.put_text(str(exc)),
        )
        return GateReport(sha=input.sha, results=[failed])

    def _materialise_acceptance(self, ref: BlobRef, scratch: Path) -> Path:
        """Write the held-out tests outside the worktree, where only the gates run them."""
        files: dict[str, str] = self._blobs.get_json(ref)
        directory = scratch / "acceptance"
        directory.mkdir(parents=True)
        for name, source in files.items():
            (directory / Path(name).name).write_text(source)
        return directory
