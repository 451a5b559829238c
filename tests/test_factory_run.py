"""FactoryRun end to end on a real Temporal server, real git repositories and real gates (scripted model)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from temporalio.client import Client

from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from darkfactory.workspace import list_branches
from tests.conftest import DEMO, demo_transcript, edited_transcript, git, make_repo, request_for, run_to_end


async def test_happy_path_merges_every_task_and_fast_forwards_main(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")

    summary = await run_to_end(client, factory_home, request)

    assert summary.succeeded, summary.error
    assert [(t.id, t.state, t.attempts) for t in summary.tasks] == [
        ("add-slugify", "merged", 2),
        ("export-slugify", "merged", 1),
    ]
    # main was fast-forwarded to one squash commit per task, each carrying its task trailer.
    subjects = git(demo_repo, "log", "--format=%s", "main").splitlines()
    assert subjects == [
        "export-slugify: Export slugify from the package",
        "add-slugify: Add textkit.slug.slugify with tests",
        "initial import",
    ]
    trailers = git(demo_repo, "log", "--format=%(trailers:key=Factory-Task,valueonly)", "main").split()
    assert trailers == [f"{request.run_id}/export-slugify", f"{request.run_id}/add-slugify"]
    # The checked-out files moved with the branch, and they hold the second attempt's fix.
    assert '.strip("-")' in (demo_repo / "textkit" / "slug.py").read_text()
    assert "slugify" in (demo_repo / "textkit" / "__init__.py").read_text()
    assert git(demo_repo, "status", "--porcelain") == ""
    assert summary.shipped_sha == git(demo_repo, "rev-parse", "main")
    # The integration branch: every whole-tree gate (scope, held-out tests and review judged each task).
    assert [g.gate for g in summary.final_gates] == ["secrets", "syntax", "lint", "types", "tests"]
    assert all(g.passed and not g.needs_approval for g in summary.final_gates)
    # The base was measured once, green; each feature task had a witness: its new test failed on the base.
    assert summary.baseline is not None and summary.baseline.coverage and summary.baseline.failed == 0
    for task in summary.tasks:
        tests_gate = next(g for g in task.gates if g.gate == "tests")
        assert any(note.startswith("witness") for note in tests_gate.notes), tests_gate.notes
    # Each task: its gates, its held-out acceptance tests and the reviewer's approval.
    for task in summary.tasks:
        assert [g.gate for g in task.gates][-2:] == ["acceptance", "review"]
        assert all(g.passed for g in task.gates)
    assert summary.usage.calls == 9 + 2 + 2 and summary.scripted  # agent turns + plan, test writers, reviews
    # Worktrees are only caches: released at the end; the branches stay for inspection.
    assert not (factory_home / "worktrees" / request.run_id).exists()
    assert f"factory/{request.run_id}/add-slugify" in list_branches(str(demo_repo), "factory/")
    if os.environ.get("DARKFACTORY_RECORD_HISTORIES"):
        from tests.test_replay import record_history

        await record_history(client, request.run_id, "happy_path")


async def test_task_that_never_passes_fails_after_the_attempt_cap(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    transcript = demo_transcript()
    first_attempt = transcript["tasks"]["add-slugify"][0]
    give_up = [{"content": [{"type": "text", "text": "I think it is fine."}], "stop_reason": "end_turn"}]
    transcript["tasks"]["add-slugify"] = [first_attempt, give_up]
    path = edited_transcript(tmp_path, tasks=transcript["tasks"])
    (demo_repo / ".factory").mkdir()
    (demo_repo / ".factory" / "policy.toml").write_text('[escalation]\non_caps_spent = "fail"\n')
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-q", "-m", "policy: fail instead of escalating")
    main_before = git(demo_repo, "rev-parse", "main")

    summary = await run_to_end(client, factory_home, request_for(demo_repo, f"scripted:{path}", max_attempts=2))

    assert not summary.succeeded and summary.phase == "failed"
    slug, export = summary.tasks
    assert (slug.state, slug.attempts) == ("failed", 2)
    assert "attempt caps spent after 2 attempt(s)" in slug.reason and "tests" in slug.reason
    failing = [g for g in slug.gates if not g.passed]
    assert failing and failing[0].gate == "tests"
    assert failing[0].feedback and "test_slugify_drops_punctuation_and_outer_spaces" in failing[0].feedback
    assert failing[0].details_ref is not None
    assert export.state == "failed" and "dependency 'add-slugify' did not merge" in export.reason
    assert "did not merge" in summary.error and summary.shipped_sha is None
    assert git(demo_repo, "rev-parse", "main") == main_before


async def test_plan_with_a_dependency_cycle_fails_the_run_naming_the_cycle(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    transcript = demo_transcript()
    tasks = transcript["plan"]["content"][0]["input"]["tasks"]
    tasks[0]["depends_on"] = ["export-slugify"]
    path = edited_transcript(tmp_path, plan=transcript["plan"])

    summary = await run_to_end(client, factory_home, request_for(demo_repo, f"scripted:{path}", max_plan_attempts=1))

    assert summary.phase == "failed"
    assert "dependency cycle" in summary.error
    assert (
        "add-slugify -> export-slugify -> add-slugify" in summary.error
        or "export-slugify -> add-slugify" in summary.error
    )
    assert summary.tasks == []
    assert [b for b in list_branches(str(demo_repo), "factory/") if not b.endswith("/integration")] == []


async def test_plan_that_breaks_the_schema_fails_the_run_naming_the_field(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    transcript = demo_transcript()
    del transcript["plan"]["content"][0]["input"]["tasks"][1]["title"]
    path = edited_transcript(tmp_path, plan=transcript["plan"])

    summary = await run_to_end(client, factory_home, request_for(demo_repo, f"scripted:{path}", max_plan_attempts=1))

    assert summary.phase == "failed"
    assert "plan is invalid" in summary.error and "tasks.1.title" in summary.error


async def test_acceptance_tests_carried_by_the_spec_gate_the_final_task_instead_of_generated_ones(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    held_out = (
        "import textkit\n\n\n"
        "def test_spec_slug_of_a_title():\n    assert textkit.slugify('A Tale, Of Two') == 'a-tale-of-two'\n"
    )
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}").model_copy(
        update={"acceptance_tests": {"test_from_the_spec.py": held_out}}
    )

    summary = await run_to_end(client, factory_home, request)

    assert summary.succeeded, summary.error
    export = summary.tasks[1]
    acceptance = next(g for g in export.gates if g.gate == "acceptance")
    assert acceptance.passed and "1 passed" in acceptance.summary
    assert summary.usage.calls == 9 + 1 + 2  # the final task's tests came with the spec: one writer call fewer
    assert not list(demo_repo.rglob("test_from_the_spec.py"))  # never in the agent's workspace


async def test_an_invalid_plan_goes_back_to_the_planner_with_the_problem_and_the_fixed_plan_runs(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transcript = demo_transcript()
    valid = transcript["plan"]
    cyclic = copy.deepcopy(valid)
    cyclic["content"][0]["input"]["tasks"][0]["depends_on"] = ["export-slugify"]
    path = edited_transcript(tmp_path, plan=cyclic, plan_retries=[valid])
    with FakeMessagesServer(ScriptResponder(path)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-replan")
        summary = await run_to_end(client, factory_home, request_for(demo_repo, "claude-sonnet-5-5"))
        plans = [r for r in server.requests if context_from_request(r.body).purpose == "plan"]

    assert summary.succeeded, summary.error
    assert len(plans) == 2
    retry = json.dumps(plans[1].body["messages"][0])
    assert "Planning attempt 2" in retry and "Your previous plan was refused" in retry and "dependency cycle" in retry


async def test_a_base_measured_once_is_reused_for_another_commit_with_the_same_tree(
    client: Client, factory_home: Path, tmp_path: Path
) -> None:
    first, second = make_repo(tmp_path / "first"), make_repo(tmp_path / "second")
    git(second, "commit", "-q", "--amend", "--no-edit", "--date=@1000000000")  # same tree, another commit
    assert git(first, "rev-parse", "HEAD") != git(second, "rev-parse", "HEAD")
    model = f"scripted:{DEMO / 'transcript.json'}"

    summaries = [await run_to_end(client, factory_home, request_for(repo, model)) for repo in (first, second)]

    assert all(summary.succeeded for summary in summaries), [s.error for s in summaries]
    reused = summaries[1].baseline
    assert reused is not None and reused.cached and reused.base_sha == git(second, "rev-parse", "HEAD~2")
