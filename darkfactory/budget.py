"""Budgets enforced before spending: a model call that could take a task or its run past the policy's
`[budget]` is not made.

The call's cost is bounded from above before it is sent: its input estimated from the request's size
(about four characters a token, all of it priced as uncached input) plus its whole `max_tokens` of output.
If spent + that bound passes a limit, the call is refused with the figures, and the task escalates; a
person may raise the limit by approving. A dollar limit on a model with no price on file cannot be kept, so
it refuses too (and says why) rather than spend blind.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from darkfactory.contracts import ModelRequest, Usage
from darkfactory.contracts.budget import BudgetCheck
from darkfactory.policy import BudgetLimits
from darkfactory.pricing import PriceTable, is_scripted, price_for

CHARS_PER_TOKEN = 4


class BudgetExceeded(Exception):
    """The call was not made; the message has the figures."""


@dataclass(frozen=True)
class CallBound:
    """The most a call can cost."""

    tokens: int
    usd: float | None


def call_bound(request: ModelRequest, prices: PriceTable | None = None) -> CallBound:
    """An upper bound: every input token priced as uncached input (a cache read costs a tenth of that), and the
    whole of `max_tokens` as output."""
    payload: dict[str, Any] = {"system": request.system, "context": request.context, "messages": request.messages}
    payload["tools"] = request.tools
    input_tokens = math.ceil(len(json.dumps(payload)) / CHARS_PER_TOKEN)
    tokens = input_tokens + request.max_tokens
    if is_scripted(request.model):
        return CallBound(tokens=tokens, usd=0.0)
    price = price_for(request.model, prices)
    usd = None if price is None else (input_tokens * price.input + request.max_tokens * price.output) / 1_000_000
    return CallBound(tokens=tokens, usd=usd)


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def _over(scope: str, spent: Usage, bound: CallBound, tokens: int | None, usd: float | None, purpose: str) -> str:
    call = f"the next {purpose} call (up to {bound.tokens:,} tokens, {_money(bound.usd)})"
    if tokens is not None and spent.total_tokens + bound.tokens > tokens:
        return (
            f"budget: {call} would take the {scope} past its token budget: {spent.total_tokens:,} of {tokens:,} spent"
        )
    if usd is not None:
        if bound.usd is None or spent.cost is None:
            return f"budget: the {scope} has a dollar budget ({_money(usd)}) but {call} cannot be priced"
        if spent.cost + bound.usd > usd:
            figures = f"{_money(spent.cost)} of {_money(usd)} spent"
            return f"budget: {call} would take the {scope} past its dollar budget: {figures}"
    return ""


def check_call(
    check: BudgetCheck | None, request: ModelRequest, purpose: str, prices: PriceTable | None = None
) -> None:
    """Raise BudgetExceeded (with the figures) when the call could go past the task's or the run's budget."""
    if check is None or not check.limits.any:
        return
    bound = call_bound(request, prices)
    limits = check.limits
    for problem in (
        _over("task", check.task_spent, bound, limits.task_tokens, limits.task_usd, purpose),
        _over("run", check.run_spent, bound, limits.run_tokens, limits.run_usd, purpose),
    ):
        if problem:
            raise BudgetExceeded(problem)


def run_budget_spent(spent: Usage, limits: BudgetLimits, max_tokens: int) -> str:
    """Why the run may start no new task, or "" while it may: its budget is spent, or what is left of its
    tokens could not pay for one call's output (`max_tokens`), so the task's first call would be refused."""
    if limits.run_tokens is not None and spent.total_tokens + max_tokens > limits.run_tokens:
        return f"the run's token budget is spent: {spent.total_tokens:,} of {limits.run_tokens:,}"
    if limits.run_usd is not None:
        if spent.cost is None:
            return f"the run has a dollar budget ({_money(limits.run_usd)}) but its spending cannot be priced"
        if spent.cost >= limits.run_usd:
            return f"the run's dollar budget is spent: {_money(spent.cost)} of {_money(limits.run_usd)}"
    return ""


def raised(limits: BudgetLimits, grants: int) -> BudgetLimits:
    """The limits after `grants` approvals to go on: each approval adds one more of every budget set."""
    if grants == 0:
        return limits

    def more(limit: float | None) -> float | None:
        return None if limit is None else limit * (1 + grants)

    task_tokens, run_tokens = more(limits.task_tokens), more(limits.run_tokens)
    return limits.model_copy(
        update={
            "task_tokens": None if task_tokens is None else int(task_tokens),
            "run_tokens": None if run_tokens is None else int(run_tokens),
            "task_usd": more(limits.task_usd),
            "run_usd": more(limits.run_usd),
        }
    )
