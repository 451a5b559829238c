"""The model seam without the vendor SDK: the `ModelClient` protocol, its error and the names a transcript
and a prompt agree on.

Kept apart from `darkfactory/llm.py` (which re-exports all of it) so that code needing only these names, the
workflows, the metrics, scripted transcripts and the CLI's checks, does not import the `anthropic` SDK: that
import takes seconds, which every `factory` command would otherwise pay.
"""

from __future__ import annotations

import re
from typing import Protocol

from darkfactory.contracts import CallContext, ModelRequest, ModelResponse
from darkfactory.errors import ServiceCallError

SCRIPTED_PREFIX = "scripted:"
PLAN_TOOL_NAME = "submit_plan"
REVIEW_TOOL_NAME = "submit_review"
ACCEPTANCE_TOOL_NAME = "submit_tests"
PLAN_ATTEMPT_LINE = re.compile(r"^Planning attempt (\d+)", re.MULTILINE)
TASK_LINE = re.compile(r"^Task id: (\S+) · attempt (\d+)", re.MULTILINE)
"""The first line of every agent prompt; the HTTP fake reads task and attempt from it."""


class ModelClient(Protocol):
    """Anything that answers one Messages API request."""

    async def create(self, request: ModelRequest, context: CallContext) -> ModelResponse: ...


class ModelCallError(ServiceCallError):
    """A model call failed. `retryable` decides whether Temporal tries again; the message is safe to log."""
