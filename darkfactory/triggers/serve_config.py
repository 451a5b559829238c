"""`factory serve`'s config: which repositories the webhooks may start runs in, and how.

A TOML file (`--config`, default `$DARKFACTORY_HOME/serve.toml`)::

    [server]
    port = 8787                       # host 127.0.0.1; put a TLS proxy in front for GitHub
    alert_window_minutes = 60         # one diagnosis run per alert per window

    [repos."acme/widgets"]            # the GitHub full name
    path = "/srv/clones/widgets"      # a local clone the workers can read
    label = "factory"                 # the issue label that starts a run
    ship = "pr"                       # how an issue's run ships
    alert_ship = "pr"                 # how an alert's diagnosis run ships (at most a PR unless set here)
    alert_labels = { service = "widgets" }   # Alertmanager labels that route an alert here
    sentry_project = "widgets"        # the Sentry project slug that routes here

Unknown keys are errors (a typo must not silently fall back to a default), and every error names its key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from darkfactory.constants import TASK_QUEUE
from darkfactory.contracts import ShipMode

FULL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")


class ServeConfigError(ValueError):
    """The config is missing, not TOML, or has a bad key; the message names the file and the key."""


class RepoTriggers(BaseModel):
    """One repository: its clone and the settings of the runs its issues and alerts start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    base: str = "main"
    remote: str = "origin"
    label: str = Field(default="factory", min_length=1)
    ship: ShipMode = "pr"
    alert_ship: ShipMode = "pr"
    model: str | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] | None = None
    max_turns: int = Field(default=30, ge=1, le=500)
    alert_labels: dict[str, str] = Field(default_factory=dict)
    sentry_project: str | None = None


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """A larger request body gets 413 before it is read to the end (GitHub's own cap is 25 MB)."""
    alert_window_minutes: int = Field(default=60, ge=1)
    task_queue: str = TASK_QUEUE
    """Where the runs go: the queue the deployment's `factory-worker`s poll."""


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    repos: dict[str, RepoTriggers] = Field(min_length=1)

    @field_validator("repos")
    @classmethod
    def _full_names(cls, repos: dict[str, RepoTriggers]) -> dict[str, RepoTriggers]:
        for name in repos:
            if not FULL_NAME.match(name):
                raise ValueError(f'repos."{name}" is not a GitHub full name; write it like repos."owner/name"')
        return repos

    def repo(self, full_name: str) -> RepoTriggers | None:
        """Configured names match GitHub's case-insensitively, as GitHub's own do."""
        for name, repo in self.repos.items():
            if name.lower() == full_name.lower():
                return repo
        return None

    def full_name_of(self, repo: RepoTriggers) -> str:
        return next(name for name, candidate in self.repos.items() if candidate is repo)


def _key(location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in location:
        text = str(part)
        parts.append(text if re.fullmatch(r"[A-Za-z0-9_]+", text) else f'"{text}"')
    return ".".join(parts)


def parse_serve_config(text: str, source: str) -> ServeConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ServeConfigError(f"{source} is not valid TOML: {exc}") from None
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            key = _key(error["loc"]) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: {key}: {message}")
        raise ServeConfigError("\n".join(problems)) from None


def load_serve_config(path: Path) -> ServeConfig:
    if not path.is_file():
        raise ServeConfigError(
            f'no serve config at {path}; write one with a [repos."owner/name"] table (path = the local clone) '
            "or pass --config FILE"
        )
    return parse_serve_config(path.read_text(encoding="utf-8"), str(path))
