"""Turns domain errors into Temporal's: one place decides what is retryable.

Business failures (bad input, an invalid plan, a 400 from the model) are non-retryable; transient ones
(rate limits, overload, timeouts, a malformed body) are retried by Temporal, with the server's
`retry-after` as the next delay. The SDK's own retries are off, so there is exactly one retry owner.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.exceptions import ApplicationError

from darkfactory.model_seam import ModelCallError
from darkfactory.shipping import GitHubError

INVALID_TARGET = "InvalidTarget"
INVALID_PLAN = "InvalidPlan"
INVALID_POLICY = "InvalidPolicy"
SHIP_REFUSED = "ShipRefused"
ENVIRONMENT_SETUP = "EnvironmentSetupFailed"
OVER_BUDGET = "OverBudget"
"""A model call refused before it was made: it could take a task or its run past the policy's `[budget]`."""


def model_error(exc: ModelCallError) -> ApplicationError:
    delay = timedelta(seconds=exc.retry_after_s) if exc.retryable and exc.retry_after_s else None
    return ApplicationError(
        str(exc),
        {"kind": exc.kind, "status": exc.status},
        type=f"Model.{exc.kind}",
        non_retryable=not exc.retryable,
        next_retry_delay=delay,
    )


def business_error(kind: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def github_error(exc: GitHubError) -> ApplicationError:
    delay = timedelta(seconds=exc.retry_after_s) if exc.retryable and exc.retry_after_s else None
    return ApplicationError(
        str(exc), type=f"GitHub.{exc.kind}", non_retryable=not exc.retryable, next_retry_delay=delay
    )
