"""Reading values back out of a workflow's history, for the commands that show what a run did."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from temporalio.api.common.v1 import Payloads
    from temporalio.client import Client

T = TypeVar("T")


async def decode_first(client: Client, payloads: Payloads, kind: type[T]) -> T | None:
    """The first payload as `kind`, or None when there is none or it has another shape (an older history)."""
    if not payloads.payloads:
        return None
    try:
        values = await client.data_converter.decode(payloads.payloads, [kind])
    except (ValueError, TypeError):
        return None
    value: T = values[0]
    return value
