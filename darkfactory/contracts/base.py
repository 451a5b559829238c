"""Shared bases: immutable boundary models, blob claim checks, id patterns."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

TASK_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Frozen(BaseModel):
    """Immutable value crossing a boundary; unknown fields are refused so typos fail loudly."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class BlobRef(Frozen):
    """A claim check for a content-addressed blob (transcript, log, diff)."""

    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the content; also its address in the store."""
    size: int
    """Length of the content in bytes."""
