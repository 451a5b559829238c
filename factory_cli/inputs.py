"""Command-line input -> a `RunRequest`, validated before anything starts (a bad input exits 2, nothing made).

The target is checked here, on the client: the repository and base branch exist, its policy (read at the
base commit, as `prepare_run` will read it) parses, a model is configured, and — when this process's own
worker will run the commands — the sandbox is strict or someone opted out (see `strict_sandbox`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, cast

from darkfactory.cli.session import UsageError, is_remote

if TYPE_CHECKING:
    from pydantic import ValidationError

    from darkfactory.contracts import IssueRef, RunRequest, ShipMode, Trigger
    from darkfactory.policy import Policy

# The checks' modules (git, the policy, the sandbox, the secret scanners) are imported by the functions that
# use them: every command group imports this module, and `factory --help` should not pay for them.

SHIP_MODES = ("branch", "merge", "push", "pr")
FLAGS = {
    "repo_path": "--repo",
    "base_branch": "--base",
    "run_id": "--run-id",
    "spec": "the spec",
    "spec_path": "--spec-path",
    "acceptance_tests": "--acceptance-tests",
    "config.model": "--model",
    "config.ship": "--ship",
    "config.max_attempts": "--max-attempts",
    "config.max_turns": "--max-turns",
    "config.max_parallel": "--max-parallel",
    "config.remote": "--remote",
    "config.github_repo": "--github-repo",
}
"""A RunRequest's fields as the options of `factory run` (and the triggers') that set them."""


def flag_of(field: str) -> str:
    """The option that sets `field` of a RunRequest (`config.max_parallel` -> `--max-parallel`)."""
    return FLAGS.get(field) or FLAGS.get(f"config.{field}") or "--" + field.rsplit(".", 1)[-1].replace("_", "-")


def explain_invalid(exc: ValidationError, flag: dict[str, str] | None = None) -> str:
    """A contract's ValidationError as `error:` lines naming the options (`--max-parallel: must be at least 1
    (got 0); ...`), without pydantic's type tags and links. `flag` names fields this module does not know."""
    from darkfactory.settings import validation_problems

    names = flag or {}
    return "\n".join(validation_problems(exc, lambda field: names.get(field) or flag_of(field)))


def read_spec(spec: Path | None, spec_text: str | None) -> str:
    if (spec is None) == (spec_text is None):
        raise UsageError("give exactly one of --spec FILE or --spec-text TEXT")
    if spec is not None:
        if not spec.is_file():
            raise UsageError(f"spec file {spec} does not exist")
        text = spec.read_text()
        if not text.strip():
            raise UsageError(f"spec file {spec} is empty; write what you want built into it")
        return text
    assert spec_text is not None
    if not spec_text.strip():
        raise UsageError("--spec-text is empty; say what you want built")
    return spec_text


def read_spec_in_repo(repo_path: str, base: str, spec_path: str) -> str:
    """A spec file committed in the repository, as it is at the tip of `base` now (runs read it again at
    their own base commit)."""
    from darkfactory.workspace import TargetError, read_file_at, validate_target

    if spec_path.startswith("/") or ".." in Path(spec_path).parts or not spec_path.strip():
        raise UsageError(f"--spec-path {spec_path!r} must be a path inside the repository, like specs/weekly.md")
    try:
        text = read_file_at(repo_path, validate_target(repo_path, base), spec_path)
    except TargetError as exc:
        raise UsageError(str(exc)) from exc
    if text is None:
        raise UsageError(f"--spec-path {spec_path} is not a file on {base} in {repo_path}; commit it first")
    if not text.strip():
        raise UsageError(f"--spec-path {spec_path} is empty on {base}; write what the run should do into it")
    return text


def resolve_model(model: str | None, remote: bool) -> str:
    from darkfactory.constants import DEFAULT_MODEL
    from darkfactory.scripted import ScriptedTranscript
    from darkfactory.settings import CredentialsError, load_credentials

    chosen = model or os.environ.get("DARKFACTORY_MODEL") or DEFAULT_MODEL
    if chosen.startswith("scripted:"):
        path = Path(chosen.removeprefix("scripted:")).expanduser().resolve()
        try:
            ScriptedTranscript.load(path)
        except Exception as exc:
            raise UsageError(f"scripted transcript {path}: {exc}") from exc
        return f"scripted:{path}"
    if remote:
        return chosen  # the workers hold the credentials
    try:
        credentials = load_credentials()
    except CredentialsError as exc:
        raise UsageError(str(exc)) from None
    if credentials.anthropic_api_key is None:
        raise UsageError(
            "no model: set ANTHROPIC_API_KEY or ANTHROPIC_API_KEY_FILE (and ANTHROPIC_BASE_URL for a gateway) to "
            "use Claude, or pass --model scripted:PATH to play a recorded transcript"
        )
    return chosen


def read_acceptance_tests(directory: Path | None) -> dict[str, str]:
    """The spec's held-out acceptance tests: every test_*.py file in `directory` (not recursive)."""
    if directory is None:
        return {}
    if not directory.is_dir():
        raise UsageError(f"acceptance tests directory {directory} does not exist")
    files = {path.name: path.read_text() for path in sorted(directory.glob("test_*.py")) if path.is_file()}
    if not files:
        raise UsageError(f"{directory} has no test_*.py files; put the held-out acceptance tests there")
    return files


def new_run_id(spec: str) -> str:
    from darkfactory.contracts import slugify_run_id

    first_line = next((line for line in spec.splitlines() if line.strip()), "run")
    return f"{slugify_run_id(first_line.lstrip('# '))[:32]}-{secrets.token_hex(3)}"


def read_target_policy(repo_path: str, base: str) -> Policy:
    """The target's policy at the tip of `base` (what the run will use); the repo and branch must exist."""
    from darkfactory.policy import POLICY_PATH, PolicyError, parse_policy
    from darkfactory.workspace import TargetError, read_file_at, validate_target

    try:
        base_sha = validate_target(repo_path, base)
        return parse_policy(read_file_at(repo_path, base_sha, POLICY_PATH), f"{POLICY_PATH} on {base}")
    except (TargetError, PolicyError) as exc:
        raise UsageError(str(exc)) from exc


def build_request(
    repo: Path,
    spec: Path | None,
    spec_text: str | None,
    base: str,
    ship: str,
    model: str | None,
    run_id: str | None,
    max_attempts: int | None,
    max_turns: int,
    acceptance_tests: Path | None = None,
    max_parallel: int = 4,
    remote: str = "origin",
    github_repo: str | None = None,
    allow_degraded_sandbox: bool = False,
    *,
    trigger: Trigger = "cli",
    report_to: IssueRef | None = None,
    spec_path: str | None = None,
    served_here: bool | None = None,
) -> RunRequest:
    """`served_here`: this process's own worker runs the run (default: in local mode). When not, the workers
    hold the credentials and check their own sandbox, so neither is asked of this process (triggers).
    `spec_path` names a spec file in the repository, read at each run's base commit instead of `spec`."""
    from pydantic import ValidationError

    from darkfactory.contracts import RunConfig, RunRequest
    from darkfactory.sandbox import worker_secret_values
    from darkfactory.strict_sandbox import DegradedSandbox, run_opt_out
    from darkfactory.untrusted import clean_untrusted

    # The cheap checks first: a mistyped option is named before any git or file work.
    if ship not in SHIP_MODES:
        raise UsageError(f"--ship: {ship!r} is not a ship mode; use {', '.join(SHIP_MODES)}")
    ship_mode = cast("ShipMode", ship)
    repo_path = str(repo.expanduser().resolve())
    policy = read_target_policy(repo_path, base)
    raw = read_spec_in_repo(repo_path, base, spec_path) if spec_path is not None else read_spec(spec, spec_text)
    if served_here is None:
        served_here = not is_remote()
    chosen = resolve_model(model, remote=not served_here)  # loads the credentials, files included
    # The spec is untrusted input: secrets and hidden text go before the workflow's history, a blob or a
    # prompt can hold them (the summary says what was removed). A spec in the repository is cleaned by the
    # run itself, at each base commit.
    cleaned = clean_untrusted(raw, worker_secret_values())
    text = "" if spec_path is not None else cleaned.text
    degraded = None
    if served_here:  # this process's worker runs the commands; other workers check their own
        try:
            degraded = run_opt_out(
                scripted=chosen.startswith("scripted:"),
                flag=allow_degraded_sandbox,
                policy_allows=policy.sandbox.allow_degraded,
            )
        except DegradedSandbox as exc:
            raise UsageError(str(exc)) from None
    try:
        config = RunConfig(
            model=chosen,
            ship=ship_mode,
            max_attempts=max_attempts,
            max_turns=max_turns,
            max_parallel=max_parallel,
            remote=remote,
            github_repo=github_repo,
            degraded_sandbox=degraded,
            input_notes=[cleaned.summary("spec")] if cleaned.notes and spec_path is None else [],
            trigger=trigger,
            report_to=report_to,
        )
        return RunRequest(
            run_id=run_id or new_run_id(cleaned.text),
            repo_path=repo_path,
            spec=text,
            spec_path=spec_path,
            base_branch=base,
            config=config,
            acceptance_tests=read_acceptance_tests(acceptance_tests),
        )
    except ValidationError as exc:
        raise UsageError(explain_invalid(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
