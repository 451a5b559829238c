"""A run's audit trail: append-only, hash-chained JSON lines, one file per run.

Every model call, tool call, gate result, human decision and ship or rollback action is one entry, with
the ids that link it back to the workflow history (workflow id and run id, activity id and attempt).
Each line carries the hash of the line before it and its own hash over its canonical JSON, so changing,
removing or reordering any byte breaks the chain at that line (`verify`). Appending is idempotent by the
entry's key: an activity retried after a crash writes what it wrote before, and the second copy is
dropped. Values are redacted (the worker's credentials, verbatim or encoded, and credential-shaped
strings) before they are written: the trail is read by people and kept for a long time.

The file lives in the factory home (`audit/<run id>.jsonl`), which every worker of a deployment shares;
appends take an exclusive lock, so workers on one host never interleave a line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from darkfactory.sandbox import worker_secret_values
from darkfactory.untrusted import redact_secrets

GENESIS = "0" * 64
"""The `prev` of a trail's first line."""


class AuditEntry(BaseModel):
    """One thing that happened in a run, as the trail records it."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    at: str
    run_id: str
    kind: str
    """model_call, tool_call, gate, decision, ship, rollback."""
    key: str
    """Unique per event within the run (e.g. `<workflow id>/<activity id>/<attempt>/<n>`): the dedupe key."""
    workflow_id: str = ""
    workflow_run_id: str = ""
    activity_id: str = ""
    attempt: int = 0
    data: dict[str, Any]
    prev: str
    hash: str


@dataclass(frozen=True)
class Event:
    """What a caller records; the trail adds the sequence number, time, chain and redaction."""

    kind: str
    key: str
    data: dict[str, Any]
    workflow_id: str = ""
    workflow_run_id: str = ""
    activity_id: str = ""
    attempt: int = 0


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(fields: dict[str, Any]) -> str:
    """The hash of an entry: over every field but `hash` itself (so over `prev`, which chains it)."""
    return hashlib.sha256(_canonical({k: v for k, v in fields.items() if k != "hash"})).hexdigest()


def _redacted(data: dict[str, Any]) -> dict[str, Any]:
    text, _kinds = redact_secrets(json.dumps(data, ensure_ascii=False), worker_secret_values())
    redacted: dict[str, Any] = json.loads(text)
    return redacted


def trail_path(home: Path, run_id: str) -> Path:
    return home / "audit" / f"{run_id}.jsonl"


def _lines(path: Path) -> Iterator[str]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.rstrip("\n")


def append(home: Path, run_id: str, events: list[Event], now: datetime | None = None) -> int:
    """Append `events` to the run's trail (those whose key is there already are skipped); how many were new."""
    if not events:
        return 0
    path = trail_path(home, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    at = (now or datetime.now(UTC)).isoformat()
    with path.open("a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        handle.seek(0)
        existing = [json.loads(line) for line in handle.read().splitlines() if line.strip()]
        keys = {entry["key"] for entry in existing}
        prev = existing[-1]["hash"] if existing else GENESIS
        seq = len(existing)
        written = 0
        for event in events:
            if event.key in keys:
                continue
            fields: dict[str, Any] = {
                "seq": seq,
                "at": at,
                "run_id": run_id,
                "kind": event.kind,
                "key": event.key,
                "workflow_id": event.workflow_id,
                "workflow_run_id": event.workflow_run_id,
                "activity_id": event.activity_id,
                "attempt": event.attempt,
                "data": _redacted(event.data),
                "prev": prev,
            }
            fields["hash"] = entry_hash(fields)
            handle.write(json.dumps(fields, ensure_ascii=False) + "\n")
            keys.add(event.key)
            prev, seq, written = fields["hash"], seq + 1, written + 1
        handle.flush()
    return written


def read(home: Path, run_id: str) -> list[AuditEntry]:
    return [AuditEntry.model_validate_json(line) for line in _lines(trail_path(home, run_id))]


def verify(home: Path, run_id: str) -> tuple[int, str | None]:
    """Check the chain: (entries checked, None) when intact, else (the good ones, what broke and where)."""
    path = trail_path(home, run_id)
    if not path.exists():
        return 0, f"no audit trail for run {run_id} at {path}"
    prev, checked = GENESIS, 0
    for line in _lines(path):
        where = f"{path} line {checked + 1}"
        try:
            fields = json.loads(line)
        except json.JSONDecodeError:
            return checked, f"{where} is not JSON"
        if not isinstance(fields, dict) or fields.get("seq") != checked:
            return checked, f"{where} is out of sequence (expected entry {checked})"
        if fields.get("prev") != prev:
            return checked, f"{where} does not follow the line before it (a line was removed, inserted or reordered)"
        if fields.get("hash") != entry_hash(fields):
            return checked, f"{where} was changed after it was written (its hash does not match its content)"
        prev, checked = fields["hash"], checked + 1
    return checked, None
