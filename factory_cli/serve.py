"""`factory serve`: the webhook service that starts runs from GitHub issues and monitoring alerts.

Starts workflows and answers; the runs themselves are executed by `factory-worker`s polling the config's
task queue (`--worker`, the default in local mode, runs one in this process too). See `serve_app` for the
hooks and `darkfactory.triggers` for what each event means.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from darkfactory.cli.session import fail, open_session, serve_locally

if TYPE_CHECKING:
    from darkfactory.settings import Credentials
    from darkfactory.triggers.serve_config import ServeConfig

# The HTTP server, the hooks and the triggers are imported when `serve` runs, not when the CLI lists commands.

app = typer.Typer()

HOOK_SECRETS = {
    "/hooks/github": "darkfactory_github_webhook_secret",
    "/hooks/alert (Alertmanager)": "darkfactory_alertmanager_token",
    "/hooks/alert (Sentry)": "darkfactory_sentry_client_secret",
}


def checked_config(path: Path) -> ServeConfig:
    """The config, with every repository's clone and base branch checked now rather than at the first event."""
    from darkfactory.triggers.serve_config import ServeConfigError, load_serve_config
    from darkfactory.workspace import TargetError, validate_target

    try:
        config = load_serve_config(path)
    except ServeConfigError as exc:
        fail(str(exc))
    for name, repo in config.repos.items():
        try:
            validate_target(str(repo.path), repo.base)
        except TargetError as exc:
            fail(f'{path}: repos."{name}".path: {exc}')
    return config


def checked_credentials() -> Credentials:
    from darkfactory.settings import CredentialsError, load_credentials

    try:
        credentials = load_credentials()
    except CredentialsError as exc:
        fail(str(exc))
    if not any(credentials.secret(name) for name in HOOK_SECRETS.values()):
        variables = ", ".join(name.upper() for name in HOOK_SECRETS.values())
        fail(f"no webhook secret is set, so every request would be refused; set one of {variables} (or its _FILE)")
    return credentials


@app.command()
def serve(
    config_path: Path | None = typer.Option(
        None, "--config", help="The serve config (TOML); default $DARKFACTORY_HOME/serve.toml."
    ),
    host: str | None = typer.Option(None, help="Listen address (default: the config's, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Listen port (default: the config's, 8787; 0 picks a free one)."),
    worker: bool | None = typer.Option(
        None, "--worker/--no-worker", help="Also run a worker in this process (default: only in local mode)."
    ),
) -> None:
    """Serve POST /hooks/github, POST /hooks/alert and GET /healthz; each accepted event starts one run."""
    from darkfactory.settings import SettingsError, load_factory_settings

    try:
        home = load_factory_settings().home
    except SettingsError as exc:
        fail(str(exc))
    config = checked_config(config_path or home / "serve.toml")
    credentials = checked_credentials()
    listener = socket.create_server((host or config.server.host, config.server.port if port is None else port))
    asyncio.run(_serve(config, credentials, listener, worker))


async def _serve(config: ServeConfig, credentials: Credentials, listener: socket.socket, worker: bool | None) -> None:
    import uvicorn

    from darkfactory.cli.serve_app import Launcher, WebhookApp
    from darkfactory.settings import FactorySettings
    from darkfactory.telemetry import configure_logging

    session = await open_session()
    async with AsyncExitStack() as stack:
        queue = config.server.task_queue
        if session.local if worker is None else worker:
            await serve_locally(stack, session, queue)
        else:
            configure_logging(path=FactorySettings().logs_dir / "serve.jsonl")
        webhooks = WebhookApp(config, credentials, Launcher(session.client, queue))
        bound_host, bound_port = listener.getsockname()[:2]
        enabled = [hook for hook, secret in HOOK_SECRETS.items() if credentials.secret(secret)]
        typer.echo(f"listening on http://{bound_host}:{bound_port}", err=False)
        typer.echo(f"hooks with a secret: {', '.join(enabled)}; runs go to task queue {queue}")
        if session.ui_url:
            typer.echo(f"runs in the web UI: {session.ui_url}")
        server = uvicorn.Server(uvicorn.Config(webhooks.app, log_level="warning", lifespan="off"))
        await server.serve(sockets=[listener])
