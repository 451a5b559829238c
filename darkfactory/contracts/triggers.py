"""What triggered runs send back: the comment on the issue that asked for the run."""

from __future__ import annotations

from pydantic import Field

from darkfactory.contracts.base import Frozen
from darkfactory.contracts.config import IssueRef


class IssueCommentInput(Frozen):
    run_id: str
    issue: IssueRef
    key: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
    """What the comment reports (`<run>:outcome`, `<run>:escalation:<task>:<n>`): posted at most once."""
    body: str = Field(min_length=1)


class IssueCommentResult(Frozen):
    posted: bool
    """True when this call posted it; False when it was already there, or could not be posted (`skipped`)."""
    url: str = ""
    skipped: str = ""
    """Why nothing was posted (no token configured on the worker)."""
