"""Placeholder: filled in by the backlog work (issue 9)."""

from __future__ import annotations

import typer

app = typer.Typer()
