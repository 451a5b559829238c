"""Held-out acceptance tests must bite: on a real Temporal server, each suite runs on the task's base first.

A held-out test that already passes there proves nothing: a written one goes back to its writer, then is
dropped with a note in the summary; a spec-given one is dropped with a note. Only biting tests gate the task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from temporalio.client import Client

from tests.conftest import demo_transcript, request_for, run_to_end, write_transcript

TOOTHLESS = (
    "from textkit.words import word_count\n\n\ndef test_words_are_still_counted():\n    assert word_count('a b') == 2\n"
)
"""Passes on the demo repository as it is: it says nothing about slugify."""
BITING = (
    "from textkit.slug import slugify\n\n\n"
    "def test_slugify_joins_words_with_dashes():\n    assert slugify('Hello World') == 'hello-world'\n"
)


def writer_reply(files: dict[str, str]) -> dict[str, Any]:
    listed = [{"path": path, "content": content} for path, content in files.items()]
    return {"content": [{"type": "tool_use", "name": "submit_tests", "input": {"files": listed}}]}


def with_writer(tmp_path: Path, first: dict[str, str], *retries: dict[str, str]) -> Path:
    transcript = demo_transcript()
    transcript["acceptance"]["add-slugify"] = writer_reply(first)
    transcript["acceptance_retries"] = {"add-slugify": [writer_reply(files) for files in retries]}
    return write_transcript(tmp_path / "transcript.json", transcript)


def notes_of(summary: Any, task_id: str) -> list[str]:
    return next(task for task in summary.tasks if task.id == task_id).notes


async def test_a_held_out_test_that_passes_on_the_base_goes_back_to_its_writer(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    script = with_writer(tmp_path, {"test_toothless.py": TOOTHLESS}, {"test_slug_acceptance.py": BITING})
    summary = await run_to_end(client, factory_home, request_for(demo_repo, f"scripted:{script}"))

    assert summary.succeeded, summary.error
    notes = notes_of(summary, "add-slugify")
    assert notes == [
        "held-out tests written again: test_toothless.py::test_words_are_still_counted passed on the base already"
    ]
    slug = next(task for task in summary.tasks if task.id == "add-slugify")
    acceptance = next(gate for gate in slug.gates if gate.gate == "acceptance")
    assert acceptance.passed and acceptance.summary == "acceptance: 1 passed"


async def test_a_held_out_test_that_never_bites_is_dropped_with_a_note(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    mixed = {"test_toothless.py": TOOTHLESS, "test_slug_acceptance.py": BITING}
    script = with_writer(tmp_path, mixed, mixed, mixed)  # the writer never improves: two rewrites, then drop
    summary = await run_to_end(client, factory_home, request_for(demo_repo, f"scripted:{script}"))

    assert summary.succeeded, summary.error
    notes = notes_of(summary, "add-slugify")
    assert len(notes) == 3 and notes[-1] == (
        "held-out tests dropped, they pass on the base already: test_toothless.py::test_words_are_still_counted"
    )
    slug = next(task for task in summary.tasks if task.id == "add-slugify")
    acceptance = next(gate for gate in slug.gates if gate.gate == "acceptance")
    assert acceptance.summary == "acceptance: 1 passed"  # only the biting test gated the task


async def test_spec_given_held_out_tests_that_pass_on_the_base_are_dropped_with_a_note(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    script = write_transcript(tmp_path / "transcript.json", demo_transcript())
    request = request_for(demo_repo, f"scripted:{script}").model_copy(
        update={"acceptance_tests": {"test_toothless.py": TOOTHLESS, "test_api_acceptance.py": _api_test()}}
    )
    summary = await run_to_end(client, factory_home, request)

    assert summary.succeeded, summary.error
    # The spec's tests gate the final task only; the one that passes on its base already is dropped.
    assert notes_of(summary, "export-slugify") == [
        "held-out tests dropped, they pass on the base already: test_toothless.py::test_words_are_still_counted"
    ]
    export = next(task for task in summary.tasks if task.id == "export-slugify")
    acceptance = next(gate for gate in export.gates if gate.gate == "acceptance")
    assert acceptance.summary == "acceptance: 1 passed", json.dumps(acceptance.model_dump())


def _api_test() -> str:
    return "import textkit\n\n\ndef test_package_exports_slugify():\n    assert textkit.slugify('A b') == 'a-b'\n"
