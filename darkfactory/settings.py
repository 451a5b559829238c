"""Process settings from the environment: where data lives, how to reach Temporal, and credentials.

Read by the entry points only (worker.py, starter.py and its command groups in factory_cli/); workflows get
everything they need as input.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from darkfactory.constants import DEFAULT_NAMESPACE
from darkfactory.devserver import default_data_dir
from darkfactory.sandbox import register_worker_secret


class FactorySettings(BaseSettings):
    """Where the factory keeps blobs, worktree caches and target environments."""

    model_config = SettingsConfigDict(env_prefix="DARKFACTORY_", extra="ignore")

    home: Path = Field(default_factory=default_data_dir)
    """Root of all local state (`DARKFACTORY_HOME`). Every worker of one deployment must see the same blobs."""
    max_concurrent_activities: int = 8
    """Activity slots of the workflows-and-git worker per process."""
    model_concurrency: int = 32
    """Model calls in flight per worker process (`DARKFACTORY_MODEL_CONCURRENCY`)."""
    model_calls_per_second: float | None = None
    """Cap on model calls per second across the whole queue (`DARKFACTORY_MODEL_CALLS_PER_SECOND`)."""
    gate_concurrency: int | None = None
    """Gate runs at once per worker process; None: the number of cores."""
    sticky_timeout_s: float = Field(default=1.0, gt=0)
    """How long a workflow task waits on the sticky queue of the worker that has the workflow cached before any
    worker may take it (`DARKFACTORY_STICKY_TIMEOUT_S`; the SDK's default is 10 s). After a worker dies, its
    workflows wait this long; a live worker too busy to answer in time costs a replay of the history elsewhere.
    Measured (bench, 2 cores): 15.7 s of wall time lost per SIGKILL at 10 s, 8.5 s at 3 s, 6.9 s at 1 s; the
    busiest run (64 tasks, 16 at once) had no sticky timeout at any of the three."""

    @field_validator("home", mode="before")
    @classmethod
    def _home_not_empty(cls, value: object) -> object:
        # `DARKFACTORY_HOME=` would be the current directory: blobs and worktrees wherever the command ran.
        if isinstance(value, str) and not value.strip():
            raise ValueError("is set but empty; set it to a directory, or unset it for the default")
        return value

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def worktrees_dir(self) -> Path:
        return self.home / "worktrees"

    @property
    def envs_dir(self) -> Path:
        return self.home / "envs"

    @property
    def baselines_dir(self) -> Path:
        """Measurements of base commits' suites, by base tree and test command (each a summary with blob refs)."""
        return self.home / "baselines"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


class TemporalSettings(BaseSettings):
    """How to reach Temporal; the variable names are the ones Temporal's own CLI and SDKs read."""

    model_config = SettingsConfigDict(env_prefix="TEMPORAL_", extra="ignore")

    address: str | None = None
    """`TEMPORAL_ADDRESS` (host:port). Unset: use (and if needed start) the embedded dev server."""
    namespace: str = DEFAULT_NAMESPACE
    api_key: str | None = Field(default=None, repr=False)
    """`TEMPORAL_API_KEY` for Temporal Cloud; implies TLS."""
    tls: bool = False
    """`TEMPORAL_TLS=true` forces TLS with the system roots."""
    tls_cert: Path | None = None
    """`TEMPORAL_TLS_CERT`: client certificate for mTLS."""
    tls_key: Path | None = None
    """`TEMPORAL_TLS_KEY`: client key for mTLS."""
    tls_ca: Path | None = None
    """`TEMPORAL_TLS_CA`: root CA of the server."""

    @field_validator("address", mode="before")
    @classmethod
    def _host_and_port(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            return None  # set but empty: unset, as Temporal's CLI takes it
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port; give it like 127.0.0.1:7233 or my-ns.a1b2c.tmprl.cloud:7233")
        return value

    @field_validator("namespace", mode="before")
    @classmethod
    def _default_when_empty(cls, value: object) -> object:
        return (value.strip() or DEFAULT_NAMESPACE) if isinstance(value, str) else value

    @property
    def remote(self) -> bool:
        return bool(self.address)

    @property
    def use_tls(self) -> bool:
        return self.tls or self.api_key is not None or self.tls_cert is not None or self.tls_ca is not None


class SettingsError(ValueError):
    """A setting from the environment or a flag is invalid; the message names it and says what to do."""


_SECRETISH = re.compile(r"key|token|secret|password", re.IGNORECASE)
"""Fields whose values an error never echoes."""


def validation_problems(exc: ValidationError, name: Callable[[str], str] = str) -> list[str]:
    """`NAME: what is wrong; what to do`, one line per problem, from a pydantic error (without its type
    tags, echoed input or documentation links). `name` turns a field path (`max_parallel`,
    `timeouts.plan_s`) into what the person typed: a flag, a variable, a policy key."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"]) or "(input)"
        lines.append(f"{name(path)}: {_explain(error, echo=not _SECRETISH.search(path))}")
    return lines


def _explain(error: Mapping[str, Any], echo: bool) -> str:
    ctx = error.get("ctx") or {}
    shown = echo and "input" in error and not isinstance(error["input"], dict | list)
    got = f" (got {error['input']!r})" if shown else ""
    kind = error["type"]
    if kind == "value_error":  # our own validators' messages already say what to do
        return str(ctx.get("error") or error["msg"])
    bounds = {
        "greater_than_equal": ("at least {}", "use {} or more"),
        "greater_than": ("more than {}", "use more than {}"),
        "less_than_equal": ("at most {}", "use {} or less"),
        "less_than": ("less than {}", "use less than {}"),
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        wrong, fix = bounds[kind]
        return f"must be {wrong.format(limit)}{got}; {fix.format(limit)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"is not a whole number{got}; give one like 4"
    if kind in ("float_parsing", "float_type"):
        return f"is not a number{got}; give one like 0.5"
    if kind in ("bool_parsing", "bool_type"):
        return f"is not true or false{got}; use true, false, 1 or 0"
    if kind == "literal_error":
        return f"is not one of {ctx.get('expected')}{got}; use one of those"
    if kind == "missing":
        return "is required; give it"
    if kind == "extra_forbidden":
        return "is not a known setting; check its spelling"
    message = str(error["msg"])
    return f"{message[:1].lower()}{message[1:]}{got}; fix the value"


_ENV_PREFIXES = {"FactorySettings": "DARKFACTORY_", "TemporalSettings": "TEMPORAL_"}
"""Settings class name (a ValidationError's title) -> its variables' prefix, to name the variable a person set."""


def is_settings_error(exc: ValidationError) -> bool:
    """Whether the error is one of these settings classes' (read from the environment), not another model's."""
    return exc.title in _ENV_PREFIXES


def _env_name(settings_class: str, field: str) -> str:
    return f"{_ENV_PREFIXES[settings_class]}{field.upper()}" if settings_class in _ENV_PREFIXES else field


def settings_problems(exc: ValidationError, overrides: Mapping[str, str] | None = None) -> SettingsError:
    """A settings class's ValidationError as a SettingsError naming the variables (or the flags in
    `overrides`, field -> flag, when the value came from one)."""
    flags = overrides or {}
    lines = validation_problems(exc, lambda field: flags.get(field) or _env_name(exc.title, field))
    return SettingsError("\n".join(lines))


def load_factory_settings() -> FactorySettings:
    """FactorySettings from the environment; `SettingsError` (fit to print) when a variable is invalid."""
    try:
        return FactorySettings()
    except ValidationError as exc:
        raise settings_problems(exc) from None


def load_temporal_settings(address: str | None = None, namespace: str | None = None) -> TemporalSettings:
    """TemporalSettings from the environment, `address` and `namespace` (the `--address` / `--namespace`
    flags) winning over TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE; `SettingsError` when a value is invalid."""
    given: dict[str, Any] = {
        name: value for name, value in (("address", address), ("namespace", namespace)) if value is not None
    }
    try:
        return TemporalSettings(**given)
    except ValidationError as exc:
        raise settings_problems(exc, {name: f"--{name}" for name in given}) from None


class CredentialsError(ValueError):
    """Credentials are configured wrongly (both a variable and its `_FILE`, an unreadable or empty file).
    The message names the variables and paths, never a secret."""


_SECRET_NAMES = (
    "anthropic_api_key",
    "github_token",
    "darkfactory_github_webhook_secret",
    "darkfactory_alertmanager_token",
    "darkfactory_sentry_client_secret",
)


class Credentials(BaseSettings):
    """Secrets, from the environment or from files (`ANTHROPIC_API_KEY_FILE`, `GITHUB_TOKEN_FILE`).

    A `_FILE` variable names a file holding the secret (a mounted Kubernetes or Docker secret, a file only
    the worker's user may read), so the secret itself is in no process's initial environment and no child
    process inherits it. Setting both a variable and its `_FILE` is an error naming both: two sources of
    one secret would silently disagree some day. Values are `SecretStr`: reprs, logs and dumps show stars.
    """

    # No prefix: the names are the vendors' own. An empty variable counts as unset. hide_input_in_errors:
    # a validation error never echoes the environment it was read from.
    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True, hide_input_in_errors=True)

    anthropic_api_key: SecretStr | None = None
    """`ANTHROPIC_API_KEY`: the Claude API key the workers' model calls use."""
    anthropic_api_key_file: Path | None = None
    """`ANTHROPIC_API_KEY_FILE`: a file holding the key (surrounding whitespace is stripped)."""
    github_token: SecretStr | None = None
    """`GITHUB_TOKEN`: for `--ship pr` (pull requests: write on the repository)."""
    github_token_file: Path | None = None
    """`GITHUB_TOKEN_FILE`: a file holding the token."""
    # `factory serve`'s webhook secrets: a request without the right signature or token starts nothing.
    darkfactory_github_webhook_secret: SecretStr | None = None
    """`DARKFACTORY_GITHUB_WEBHOOK_SECRET`: the GitHub webhook's secret (X-Hub-Signature-256)."""
    darkfactory_github_webhook_secret_file: Path | None = None
    darkfactory_alertmanager_token: SecretStr | None = None
    """`DARKFACTORY_ALERTMANAGER_TOKEN`: the bearer token Alertmanager's webhook config sends."""
    darkfactory_alertmanager_token_file: Path | None = None
    darkfactory_sentry_client_secret: SecretStr | None = None
    """`DARKFACTORY_SENTRY_CLIENT_SECRET`: the Sentry integration's client secret (Sentry-Hook-Signature)."""
    darkfactory_sentry_client_secret_file: Path | None = None

    @model_validator(mode="after")
    def _read_files(self) -> Credentials:
        for name in _SECRET_NAMES:
            path: Path | None = getattr(self, f"{name}_file")
            if path is None:
                continue
            var, file_var = name.upper(), f"{name.upper()}_FILE"
            if getattr(self, name) is not None:
                raise CredentialsError(f"both {var} and {file_var} are set; set only one of them")
            try:
                value = path.expanduser().read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise CredentialsError(f"{file_var}={path}: cannot read it ({reason})") from None
            if not value:
                raise CredentialsError(f"{file_var}={path} is empty; put the secret in it")
            setattr(self, name, SecretStr(value))
            register_worker_secret(value)  # not in os.environ, yet the secret checks must know it
        return self

    def anthropic_key(self) -> str | None:
        return self.anthropic_api_key.get_secret_value() if self.anthropic_api_key is not None else None

    def github_key(self) -> str | None:
        return self.github_token.get_secret_value() if self.github_token is not None else None

    def secret(self, name: str) -> str | None:
        """One of the secrets by its field name (`darkfactory_alertmanager_token`), None when unset."""
        value: SecretStr | None = getattr(self, name)
        return value.get_secret_value() if value is not None else None


def load_credentials() -> Credentials:
    """The process's credentials; `CredentialsError` (with a message fit to print) when misconfigured."""
    try:
        return Credentials()
    except ValidationError as exc:
        # The validator's own messages: they name variables and paths. Pydantic's rendering would add the
        # error type and location, which say nothing to a person setting environment variables.
        messages = [str(error.get("ctx", {}).get("error") or error["msg"]) for error in exc.errors()]
        raise CredentialsError("; ".join(messages)) from None
