"""The error an outside service's call raises (the model API, GitHub): what happened and whether to retry."""

from __future__ import annotations


class ServiceCallError(Exception):
    """A call to an outside service failed. `retryable` decides whether Temporal tries again; the message
    is safe to log (it names the service and the status, never a credential)."""

    def __init__(
        self,
        message: str,
        kind: str = "unexpected",
        retryable: bool = False,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        # All fields go into args so the exception pickles (process pools, Temporal failure converters).
        super().__init__(message, kind, retryable, retry_after_s, status)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, retryable={self.retryable}, status={self.status}, "
            f"retry_after_s={self.retry_after_s}, message={self.message!r})"
        )
