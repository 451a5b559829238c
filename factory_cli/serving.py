"""Serving: `factory dev` runs, stops or reports the embedded Temporal dev server."""

from __future__ import annotations

import typer

from darkfactory import devserver
from darkfactory.cli.session import fail

app = typer.Typer()


def _ports_in_force() -> str:
    """The ports as this environment sets them, for the help (read when the CLI starts, so a changed port shows)."""
    try:
        port, ui_port = devserver.dev_ports()
    except ValueError as exc:
        return f"ports from {devserver.ENV_DEV_PORT} / {devserver.ENV_DEV_UI_PORT}, now invalid: {exc}"
    return (
        f"frontend 127.0.0.1:{port}, UI http://127.0.0.1:{ui_port}; {devserver.ENV_DEV_PORT} and "
        f"{devserver.ENV_DEV_UI_PORT} change them"
    )


@app.command(
    help="Run the embedded Temporal dev server in the foreground (SQLite in the data dir; "
    f"{_ports_in_force()}).\n\nRun, demo and the other commands start it detached when no --address is given."
)
def dev(
    stop: bool = typer.Option(False, "--stop", help="Stop the embedded server started by run, demo or dev."),
    show_status: bool = typer.Option(False, "--status", help="Say whether the embedded server is running."),
) -> None:
    from darkfactory.settings import SettingsError, load_factory_settings

    try:
        config = devserver.DevServerConfig.from_env(load_factory_settings().home)
    except (SettingsError, ValueError) as exc:
        fail(str(exc))
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
