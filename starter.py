"""The `factory` CLI: the entry point, assembled from the command groups in `factory_cli/`.

runs (`run`, `status`, `cancel`), listing (`runs`), people (`queue`, `approve`, `reject`, `retry`),
schedules (`schedule ...`), the backlog (`backlog ...`), the webhooks (`serve`), the audit trail
(`audit`), reports (`report`), the demo and serving (`dev`). Each command parses and validates its
input before anything starts, builds a client, calls library code and prints. With no TEMPORAL_ADDRESS
it uses the embedded dev server (starting it if none listens) and `run` serves its run with a worker
in-process, on task queues of its own; with one set it only starts and watches workflows.
"""

from __future__ import annotations

from collections.abc import Sequence

import typer

import worker as worker_module
from factory_cli import audit, backlog, demo, listing, people, report, runs, schedules, serve, serving

app = typer.Typer(add_completion=False, no_args_is_help=True, help="darkfactory: spec in, merged code out.")
for group in (runs, listing, people, audit, report, schedules, backlog, serve, demo, serving):
    app.add_typer(group.app)


def main(argv: Sequence[str] | None = None) -> None:
    worker_module.exit_cleanly(lambda: app(args=list(argv) if argv is not None else None))


if __name__ == "__main__":
    main()
