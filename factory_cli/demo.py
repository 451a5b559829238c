"""`factory demo`: the offline demo — a sample repo, a two-task spec and a scripted model, no API key."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import typer

from darkfactory.cli.session import UsageError, fail

app = typer.Typer()
DEMO_FILES = Path(__file__).resolve().parent / "demo_files"
"""The demo's repository, spec and transcript: package data (a checkout's examples/demo links here)."""


@app.command()
def demo(
    keep: bool = typer.Option(False, help="Keep the demo repository instead of deleting it afterwards."),
) -> None:
    """Run the offline demo: a sample repo, a two-task spec and a scripted model (no API key needed)."""
    from rich.console import Console

    from darkfactory.cli.inputs import build_request
    from darkfactory.cli.runs import run_and_watch

    source = DEMO_FILES / "repo"
    if not source.is_dir():
        fail(f"demo files are missing at {source}; reinstall darkfactory (pip install --force-reinstall darkfactory)")
    workdir = Path(tempfile.mkdtemp(prefix="darkfactory-demo-"))
    repo = workdir / "textkit"
    shutil.copytree(source, repo)
    _init_repo(repo)
    console = Console()
    console.print(f"Demo repository: {repo} (a copy of the demo repository shipped with darkfactory)", highlight=False)
    try:
        request = build_request(
            repo,
            DEMO_FILES / "spec.md",
            None,
            "main",
            "merge",
            f"scripted:{DEMO_FILES / 'transcript.json'}",
            None,
            None,
            30,
        )
    except UsageError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        fail(str(exc))
    summary = asyncio.run(run_and_watch(request, as_json=False))
    if summary.succeeded:
        log = subprocess.run(["git", "-C", str(repo), "log", "--oneline", "-5", "main"], capture_output=True, text=True)
        console.print("\nmain after the run:\n" + log.stdout, highlight=False)
    console.print(
        "[bold yellow]The model in this demo was scripted:[/] every answer came from "
        "the demo's recorded transcript.json. Set ANTHROPIC_API_KEY and use `factory run` for Claude."
    )
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        console.print(f"Kept {repo}", highlight=False)
    raise typer.Exit(0 if summary.succeeded else 1)


def _init_repo(repo: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@example.invalid",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@example.invalid",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "textkit: initial import"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
