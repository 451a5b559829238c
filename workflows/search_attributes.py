"""The factory's search attributes as typed keys (names and kinds are defined once, in `constants`)."""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeKey

from darkfactory.constants import SA_NEEDS_REVIEW, SA_REPO, SA_STATUS, SA_TRIGGER, SEARCH_ATTRIBUTES

STATUS = SearchAttributeKey.for_keyword(SA_STATUS)
NEEDS_REVIEW = SearchAttributeKey.for_bool(SA_NEEDS_REVIEW)
REPO = SearchAttributeKey.for_keyword(SA_REPO)
TRIGGER = SearchAttributeKey.for_keyword(SA_TRIGGER)


def all_keys() -> list[SearchAttributeKey[Any]]:
    """Every factory search attribute, for servers that take them at start (the test and bench servers)."""
    keys: list[SearchAttributeKey[Any]] = []
    for name, kind in SEARCH_ATTRIBUTES.items():
        keys.append(SearchAttributeKey.for_bool(name) if kind == "Bool" else SearchAttributeKey.for_keyword(name))
    return keys
