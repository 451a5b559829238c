"""Process settings from the environment: where data lives and how to reach Temporal.

Read by the entry points only (worker.py, starter.py); workflows get everything they need as input.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from darkfactory.constants import DEFAULT_NAMESPACE
from darkfactory.devserver import default_data_dir


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

    @property
    def remote(self) -> bool:
        return bool(self.address)

    @property
    def use_tls(self) -> bool:
        return self.tls or self.api_key is not None or self.tls_cert is not None or self.tls_ca is not None
