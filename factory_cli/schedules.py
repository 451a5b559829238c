"""Placeholder: filled in by the serve work (issue 9)."""

from __future__ import annotations

import typer

app = typer.Typer()
