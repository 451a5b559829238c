"""Builds the model roles' requests from the templates in `prompts/`.

Requests are laid out for the prompt cache, most stable first: tools, system prompt, repository overview,
then what changes per call (the task, feedback, turns). The planner, the acceptance-test writer and the
reviewer share one tool list (`role_tools`, each request forcing its own tool) and one system prompt
(`roles_system.j2`), so their common prefix is byte-identical and long enough to be cached on its own; with
the repository overview of the same commit it grows further. The coding agent has tools of its own, and
shares its prefix with every agent turn, task and attempt.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2
from pydantic import BaseModel

from darkfactory.agent_tools import tool_definitions
from darkfactory.contracts import (
    AcceptanceInput,
    AcceptanceTests,
    AttemptBrief,
    ModelRequest,
    Plan,
    PlanInput,
    ReviewInput,
    ReviewVerdict,
)
from darkfactory.repo_context import RepoSnapshot
from darkfactory.untrusted import as_data

SUBMIT_PLAN_TOOL = "submit_plan"
SUBMIT_REVIEW_TOOL = "submit_review"
SUBMIT_TESTS_TOOL = "submit_tests"
MAX_DIFF_CHARS = 40_000
"""Diff characters shown to the reviewer; larger changes escalate on size anyway."""


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("darkfactory", "prompts"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # prompts are plain text for a model, not HTML
    )
    # Text from outside (the spec, gate output quoting the repository, the diff) goes between markers it
    # cannot fake: a spec containing "</spec>" could otherwise end its own block and speak as the prompt.
    environment.filters["as_data"] = as_data
    return environment


def render(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(**values)


def repository_context(repo: RepoSnapshot) -> str:
    """The repository overview every role's request starts with (`ModelRequest.context`)."""
    return render("repo_context.j2", repo=repo)


def plan_tool() -> dict[str, Any]:
    """The tool the planner answers through; its schema is the Plan contract itself."""
    return _schema_tool(
        SUBMIT_PLAN_TOOL, "Submit the plan: a summary and the tasks, with dependencies between them.", Plan
    )


def role_tools() -> list[dict[str, Any]]:
    """The tools of the planner, the acceptance-test writer and the reviewer, in one list they share (the
    cached prefix starts with the tools); each request forces its own with `tool_choice`."""
    return [
        plan_tool(),
        _schema_tool(SUBMIT_TESTS_TOOL, "Submit the acceptance test files.", AcceptanceTests),
        _schema_tool(SUBMIT_REVIEW_TOOL, "Submit the review verdict and findings.", ReviewVerdict),
    ]


def roles_system() -> str:
    return render("roles_system.j2")


def _role_request(model: str, repo: RepoSnapshot, user: str, tool: str, max_tokens: int) -> ModelRequest:
    return ModelRequest(
        model=model,
        system=roles_system(),
        context=repository_context(repo),
        messages=[{"role": "user", "content": user}],
        tools=role_tools(),
        tool_choice={"type": "tool", "name": tool},
        max_tokens=max_tokens,
    )


def planner_request(input: PlanInput, repo: RepoSnapshot) -> ModelRequest:
    """The planner's request: the repository, the tests failing on its base, the spec."""
    user = render(
        "planner_user.j2",
        spec=input.spec,
        attempt=input.attempt,
        problem=input.problem,
        base_failures=input.base_failures,
        base_failed=input.base_failed,
    )
    return _role_request(input.config.model, repo, user, SUBMIT_PLAN_TOOL, input.config.max_tokens)


def review_request(input: ReviewInput, diff: str, diff_stat: str, repo: RepoSnapshot) -> ModelRequest:
    """A fresh-context review: the spec, the task, the diff and the gate results — never the generator's
    transcript, so the reviewer cannot be talked into agreeing with the generator's reasoning. `repo` is the
    task's base, as the acceptance-test writer saw it."""
    truncated = len(diff) > MAX_DIFF_CHARS
    user = render(
        "reviewer_user.j2",
        task=input.task,
        attempt=input.attempt,
        max_attempts=input.max_attempts,
        spec=input.spec,
        gates=input.gates,
        diff=diff[:MAX_DIFF_CHARS],
        diff_truncated=truncated,
        diff_stat=diff_stat,
    )
    return _role_request(input.model, repo, user, SUBMIT_REVIEW_TOOL, input.config.max_tokens)


def acceptance_request(input: AcceptanceInput, repo: RepoSnapshot) -> ModelRequest:
    user = render(
        "acceptance_user.j2",
        task=input.task,
        spec=input.spec,
        attempt=input.attempt,
        max_attempts=input.max_attempts,
        problem=input.problem,
    )
    return _role_request(input.config.model, repo, user, SUBMIT_TESTS_TOOL, input.config.max_tokens)


def _schema_tool(name: str, description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {"name": name, "description": description, "input_schema": inline_refs(model.model_json_schema())}


def agent_system() -> str:
    return render("agent_system.j2")


def agent_first_message(brief: AttemptBrief) -> str:
    return render(
        "agent_first.j2",
        task=brief.task,
        attempt=brief.attempt,
        max_attempts=brief.max_attempts,
        spec=brief.spec,
        feedback=brief.feedback,
        acceptance_names=brief.acceptance_names,
    )


def agent_tools() -> list[dict[str, Any]]:
    return tool_definitions()


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace `$ref`s into `$defs` by the definitions themselves: tool schemas are simplest self-contained."""
    definitions = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved = resolve(schema)
    assert isinstance(resolved, dict)
    return resolved
