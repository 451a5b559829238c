"""Builds the planner's and the coding agent's requests from the templates in `prompts/`.

The stable prefix (system prompt, tool definitions, repository listing) comes first so prompt caching
covers it; what changes per call (feedback, turns) comes after.
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
from darkfactory.untrusted import as_data

SUBMIT_PLAN_TOOL = "submit_plan"
SUBMIT_REVIEW_TOOL = "submit_review"
SUBMIT_TESTS_TOOL = "submit_tests"
MAX_DIFF_CHARS = 40_000
"""Diff characters shown to the reviewer; larger changes escalate on size anyway."""
MAX_LISTED_FILES = 300


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


def _listing(files: list[str]) -> tuple[list[str], bool]:
    return files[:MAX_LISTED_FILES], len(files) > MAX_LISTED_FILES


def plan_tool() -> dict[str, Any]:
    """The tool the planner answers through; its schema is the Plan contract itself."""
    return _schema_tool(
        SUBMIT_PLAN_TOOL, "Submit the plan: a summary and the tasks, with dependencies between them.", Plan
    )


def planner_request(input: PlanInput, files: list[str], readme: str) -> ModelRequest:
    """The planner's request: the repository, the tests failing on its base, the spec."""
    listed, truncated = _listing(files)
    return ModelRequest(
        model=input.config.model,
        system=render("planner_system.j2"),
        messages=[
            {
                "role": "user",
                "content": render(
                    "planner_user.j2",
                    spec=input.spec,
                    files=listed,
                    truncated=truncated,
                    readme=readme,
                    attempt=input.attempt,
                    problem=input.problem,
                    base_failures=input.base_failures,
                    base_failed=input.base_failed,
                ),
            }
        ],
        tools=[plan_tool()],
        tool_choice={"type": "tool", "name": SUBMIT_PLAN_TOOL},
        max_tokens=input.config.max_tokens,
    )


def review_request(input: ReviewInput, diff: str, diff_stat: str) -> ModelRequest:
    """A fresh-context review: the spec, the task, the diff and the gate results — never the generator's
    transcript, so the reviewer cannot be talked into agreeing with the generator's reasoning."""
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
    return ModelRequest(
        model=input.model,
        system=render("reviewer_system.j2"),
        messages=[{"role": "user", "content": user}],
        tools=[_schema_tool(SUBMIT_REVIEW_TOOL, "Submit the review verdict and findings.", ReviewVerdict)],
        tool_choice={"type": "tool", "name": SUBMIT_REVIEW_TOOL},
        max_tokens=input.config.max_tokens,
    )


def acceptance_request(input: AcceptanceInput, files: list[str]) -> ModelRequest:
    listed, truncated = _listing(files)
    user = render(
        "acceptance_user.j2",
        task=input.task,
        spec=input.spec,
        files=listed,
        truncated=truncated,
        attempt=input.attempt,
        max_attempts=input.max_attempts,
        problem=input.problem,
    )
    return ModelRequest(
        model=input.config.model,
        system=render("acceptance_system.j2"),
        messages=[{"role": "user", "content": user}],
        tools=[_schema_tool(SUBMIT_TESTS_TOOL, "Submit the acceptance test files.", AcceptanceTests)],
        tool_choice={"type": "tool", "name": SUBMIT_TESTS_TOOL},
        max_tokens=input.config.max_tokens,
    )


def _schema_tool(name: str, description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {"name": name, "description": description, "input_schema": inline_refs(model.model_json_schema())}


def agent_system() -> str:
    return render("agent_system.j2")


def agent_first_message(brief: AttemptBrief, files: list[str]) -> str:
    listed, truncated = _listing(files)
    return render(
        "agent_first.j2",
        task=brief.task,
        attempt=brief.attempt,
        max_attempts=brief.max_attempts,
        spec=brief.spec,
        feedback=brief.feedback,
        acceptance_names=brief.acceptance_names,
        files=listed,
        truncated=truncated,
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
