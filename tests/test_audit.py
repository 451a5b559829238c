"""The audit trail: hash-chained, append-only, idempotent, redacted; and what a real run writes to it."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from darkfactory import audit
from tests.conftest import DEMO, escalation_of, request_for, run_to_end
from tests.test_escalation import BIN, address, cli, never_passing, started

SECRET = "sk-ant-api03-" + "Zq8" * 30


def event(n: int, **data: Any) -> audit.Event:
    return audit.Event(kind="tool_call", key=f"wf/{n}/1/0", data={"n": n, **data}, workflow_id="wf")


def test_the_chain_breaks_at_any_changed_removed_or_reordered_line(tmp_path: Path) -> None:
    assert audit.append(tmp_path, "r1", [event(n) for n in range(5)]) == 5
    assert audit.verify(tmp_path, "r1") == (5, None)
    path = audit.trail_path(tmp_path, "r1")
    original = path.read_bytes()
    lines = original.decode().splitlines(keepends=True)

    for position in (10, len(original) // 2, len(original) - 5):  # one byte, anywhere
        changed = bytearray(original)
        changed[position] = ord("X") if changed[position] != ord("X") else ord("Y")
        path.write_bytes(bytes(changed))
        checked, problem = audit.verify(tmp_path, "r1")
        assert problem is not None and checked < 5, position
    for broken in (lines[:2] + lines[3:], [lines[1], lines[0], *lines[2:]]):
        path.write_text("".join(broken))
        assert audit.verify(tmp_path, "r1")[1] is not None
    path.write_bytes(original)
    assert audit.verify(tmp_path, "r1") == (5, None)


def test_appends_are_idempotent_by_key_and_continue_the_chain(tmp_path: Path) -> None:
    audit.append(tmp_path, "r2", [event(0), event(1)])
    assert audit.append(tmp_path, "r2", [event(1), event(2)]) == 1  # a retried activity writes event 1 again
    entries = audit.read(tmp_path, "r2")
    assert [entry.data["n"] for entry in entries] == [0, 1, 2]
    assert audit.verify(tmp_path, "r2") == (3, None)


def test_a_planted_secret_never_reaches_the_trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKFACTORY_CANARY_API_KEY", SECRET)  # a worker credential, by its variable's name
    audit.append(tmp_path, "r3", [event(0, summary=f"bash `curl -H 'x-api-key: {SECRET}' ...` -> rc 0")])
    text = audit.trail_path(tmp_path, "r3").read_text()
    assert SECRET not in text and SECRET[:20] not in text
    assert "REDACTED" in text
    assert audit.verify(tmp_path, "r3") == (1, None)


def factory_audit(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DARKFACTORY_"))}
    env |= {"DARKFACTORY_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([str(BIN / "factory"), "audit", *args], env=env, capture_output=True, text=True, timeout=60)


async def test_a_real_run_writes_a_verifiable_trail_that_fails_after_one_changed_byte(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")
    summary = await run_to_end(client, factory_home, request)
    assert summary.succeeded, summary.error

    entries = [json.loads(line) for line in factory_audit(factory_home, request.run_id, "--json").stdout.splitlines()]
    kinds = [entry["kind"] for entry in entries]
    for kind in ("model_call", "tool_call", "gate", "merge", "ship"):
        assert kind in kinds, kind
    purposes = {entry["data"]["purpose"] for entry in entries if entry["kind"] == "model_call"}
    assert {"plan", "agent", "review"} <= purposes
    failed = [e for e in entries if e["kind"] == "gate" and not e["data"]["passed"]]
    assert [(e["data"]["task_id"], e["data"]["gate"], e["data"]["attempt"]) for e in failed] == [
        ("add-slugify", "tests", 1)
    ]
    assert all(entry["workflow_id"].startswith(f"run-{request.run_id}") and entry["activity_id"] for entry in entries)

    verified = factory_audit(factory_home, request.run_id, "--verify")
    assert verified.returncode == 0, verified.stderr
    assert f"{len(entries)} entries, hash chain intact" in verified.stdout
    path = audit.trail_path(factory_home, request.run_id)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] = ord("0") if data[middle] != ord("0") else ord("1")
    path.write_bytes(bytes(data))
    broken = factory_audit(factory_home, request.run_id, "--verify")
    assert broken.returncode == 1 and "BROKEN" in broken.stderr
    assert factory_audit(factory_home, f"no-such-run-{uuid.uuid4().hex[:6]}").returncode == 2


async def test_a_persons_decision_is_in_the_trail_with_who_and_the_note(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    request = request_for(
        demo_repo, f"scripted:{never_passing(tmp_path, then_fix=True)}", ship="branch", max_attempts=2
    )
    async with started(client, factory_home, request) as handle:
        await escalation_of(client, request.run_id, "add-slugify")
        retried = cli(
            address(client), "retry", request.run_id, "add-slugify", "--note", "handle empty titles", "--by", "ana"
        )
        assert retried.returncode == 0, retried.stderr
        await handle.result()
    decisions = [e for e in audit.read(factory_home, request.run_id) if e.kind == "decision"]
    assert [(d.data["action"], d.data["by"], d.data["note"], d.data["task_id"]) for d in decisions] == [
        ("retry", "ana", "handle empty titles", "add-slugify")
    ]
    assert audit.verify(factory_home, request.run_id)[1] is None
