"""`factory audit RUN [--verify] [--json]`: a run's audit trail, and a check of its hash chain."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from darkfactory.cli.session import fail

if TYPE_CHECKING:
    from darkfactory.audit import AuditEntry

app = typer.Typer()


def _what(entry: AuditEntry) -> str:
    data = entry.data
    if entry.kind == "model_call":
        cost = data.get("cost_usd")
        priced = "cost unknown" if cost is None else f"${cost:.4f}"
        tokens = f"{data.get('input_tokens', 0)} in / {data.get('output_tokens', 0)} out"
        return f"{data.get('purpose')} · {data.get('model')} · {tokens} · {priced}"
    if entry.kind == "tool_call":
        return f"{data.get('tool')}: {data.get('summary')}" + (" (error)" if data.get("is_error") else "")
    if entry.kind == "gate":
        return f"{data.get('gate')} {'passed' if data.get('passed') else 'FAILED'}: {data.get('summary')}"
    if entry.kind == "decision":
        return f"{data.get('action')} by {data.get('by')}: {data.get('note')}"
    return ", ".join(f"{k}={v}" for k, v in data.items())


@app.command("audit")
def show(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id (or its workflow id)."),
    check: bool = typer.Option(False, "--verify", help="Check the hash chain; exit 1 if any line was changed."),
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON lines."),
) -> None:
    """Show a run's audit trail: every model call, tool call, gate, decision and ship action."""
    from darkfactory import audit as trail
    from darkfactory.settings import SettingsError, load_factory_settings
    from darkfactory.triggers.ids import run_id_of_workflow

    run_id = run_id_of_workflow(run_id) if run_id.startswith("run-") else run_id
    try:
        home = load_factory_settings().home
    except SettingsError as exc:
        fail(str(exc))
    path = trail.trail_path(home, run_id)
    if not path.exists():
        fail(f"no audit trail for run {run_id} at {path}; runs write it in DARKFACTORY_HOME on the workers")
    if check:
        checked, problem = trail.verify(home, run_id)
        if problem is not None:
            typer.echo(f"audit trail of {run_id}: BROKEN after {checked} good entries: {problem}", err=True)
            raise typer.Exit(1)
        typer.echo(f"audit trail of {run_id}: {checked} entries, hash chain intact ({path})")
        return
    try:
        entries = trail.read(home, run_id)
    except ValueError as exc:
        kind = exc.__class__.__name__
        fail(f"{path} is not a readable audit trail ({kind}); `factory audit {run_id} --verify` says where")
    if as_json:
        for entry in entries:
            print(json.dumps(entry.model_dump(mode="json")))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audit trail of {run_id} ({len(entries)} entries)")
    for column in ("#", "at", "kind", "where", "what"):
        table.add_column(column)
    for entry in entries:
        where = entry.workflow_id.removeprefix(f"run-{run_id}").removeprefix("-task-") or "run"
        table.add_row(str(entry.seq), entry.at[11:19], entry.kind, where, _what(entry))
    Console().print(table)
