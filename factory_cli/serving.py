"""Serving: `factory dev` runs, stops or reports the embedded Temporal dev server."""

from __future__ import annotations

import typer

from darkfactory import devserver
from darkfactory.settings import FactorySettings
from factory_cli.session import fail

app = typer.Typer()


@app.command()
def dev(
    stop: bool = typer.Option(False, "--stop", help="Stop the embedded server started by run, demo or dev."),
    show_status: bool = typer.Option(False, "--status", help="Say whether the embedded server is running."),
) -> None:
    """Run the embedded Temporal dev server in the foreground (SQLite in the data dir, UI on :8233)."""
    config = devserver.DevServerConfig.from_env(FactorySettings().home)
    if stop:
        stopped = devserver.stop(config)
        typer.echo("stopped" if stopped else "no embedded server was running")
        return
    if show_status:
        state = devserver.status(config)
        typer.echo(
            f"{'listening' if state.listening else 'not running'} on {state.address}; "
            f"UI {state.ui_url}; database {state.db_path}"
        )
        return
    typer.echo(f"Temporal dev server on {config.address}, UI {config.ui_url}, database {config.db_path}")
    try:
        code = devserver.run_foreground(config)
    except devserver.DevServerError as exc:
        fail(str(exc))
    raise typer.Exit(code)
