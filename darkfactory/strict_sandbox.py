"""Strict by default: no model-written command runs unsandboxed unless someone said so, on the record.

Where bubblewrap is unusable the sandbox degrades to a scrubbed environment on the host (tier `none`).
`factory run` (its in-process worker runs the commands) and `factory-worker` refuse to start there, before
any model call or branch, unless the run is scripted (the commands come from a recorded transcript, not a
model) or someone opted out: `--allow-degraded-sandbox`, or the target's `[sandbox] allow_degraded = true`.
The opt-out is recorded in the run's config and summary (`degraded_sandbox`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from darkfactory.contracts.config import SandboxOptOut
from darkfactory.policy import POLICY_PATH
from darkfactory.sandbox import SANDBOX_ENV_VAR, SandboxUnavailable, sandbox_tier

FLAG = "--allow-degraded-sandbox"
INSTALL = "apt-get install -y bubblewrap slirp4netns"
POLICY_KEY = f"[sandbox] allow_degraded = true in {POLICY_PATH}"

OPT_OUT_TEXT: dict[SandboxOptOut, str] = {
    "flag": f"opted out by {FLAG}",
    "policy": f"opted out by {POLICY_KEY}",
    "scripted": "scripted model: its commands come from a recorded transcript",
}
"""How the report and the console name an opt-out."""


class DegradedSandbox(Exception):
    """The sandbox is degraded and nobody opted out; the message says how to fix it or opt out."""


def degraded_note(opt_out: SandboxOptOut) -> str:
    """`degraded (opted out by --allow-degraded-sandbox)` and the like: what summaries print."""
    return f"degraded ({OPT_OUT_TEXT[opt_out]})"


def current_tier() -> str:
    """`bwrap` or `none`; a forced tier that cannot be had (DARKFACTORY_SANDBOX=bwrap without it) refuses."""
    try:
        return sandbox_tier()
    except (SandboxUnavailable, ValueError) as exc:
        raise DegradedSandbox(str(exc)) from None


def _why_degraded() -> str:
    if os.environ.get(SANDBOX_ENV_VAR, "").strip().lower() == "none":
        return f"{SANDBOX_ENV_VAR}=none turns the bubblewrap sandbox off"
    return "bubblewrap is missing or cannot create user namespaces here"


def run_opt_out(*, scripted: bool, flag: bool, policy_allows: bool) -> SandboxOptOut | None:
    """For a run whose commands run on this machine: None where bubblewrap works, else the opt-out used.

    Raises `DegradedSandbox` when the sandbox is degraded and nothing allows it.
    """
    if current_tier() != "none":
        return None
    if scripted:
        return "scripted"
    if flag:
        return "flag"
    if policy_allows:
        return "policy"
    raise DegradedSandbox(
        f"refusing to start: {_why_degraded()}, so the agent's commands and the repository's tests would run "
        f"unsandboxed on this machine. Install bubblewrap ({INSTALL}), or accept the risk for this run with "
        f"{FLAG} (or {POLICY_KEY} on the base branch); the opt-out is recorded in the run summary."
    )


def worker_runs_degraded(serve: Sequence[str], *, flag: bool) -> bool:
    """For `factory-worker`: True when it will run commands unsandboxed because `--allow-degraded-sandbox`
    says so. Raises `DegradedSandbox` when it would and nothing allows it.

    A worker runs the commands of every run on its queues, whichever worker makes their model calls, so
    no run's scripted model exempts it; one that serves only model calls runs no commands at all.
    """
    if not {"workflows", "gates"} & set(serve) or current_tier() != "none":
        return False
    if flag:
        return True
    raise DegradedSandbox(
        f"refusing to start: {_why_degraded()}, so the agent's commands and the repositories' tests would run "
        f"unsandboxed on this worker. Install bubblewrap ({INSTALL}), or accept the risk with factory-worker "
        f"{FLAG} (a worker serving only --serve model runs no commands)."
    )
