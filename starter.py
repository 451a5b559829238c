"""The `factory` CLI: the entry point, assembled from the command groups in `factory_cli/`.

runs (`run`, `watch`, `status`, `cancel`), listing (`runs`), people (`queue`, `approve`, `reject`,
`retry`), the agent's work (`transcript`), schedules (`schedule ...`), the backlog (`backlog ...`), the
webhooks (`serve`), the audit trail (`audit`), reports (`report`), cleaning up (`prune`), the demo and
serving (`dev`). Each command parses and validates its
input before anything starts, builds a client, calls library code and prints. With no `--address` (or
TEMPORAL_ADDRESS) it uses the embedded dev server (starting it if none listens) and `run` serves its run
with a worker in-process, on task queues of its own; with one it only starts and watches workflows.

The groups import only what their options need; each command loads the Temporal client, the workflows or
the worker when it runs, so `factory --help` and `factory queue` start at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import typer

from darkfactory.cli import (
    audit,
    backlog,
    demo,
    listing,
    people,
    prune,
    report,
    runs,
    schedules,
    serve,
    serving,
    transcript,
)
from darkfactory.cli.session import UsageError, exit_cleanly, fail, temporal_settings, use_connection
from darkfactory.devserver import dev_ports

GLOBAL_FLAGS = ("--address", "--namespace")
"""Root options that may also follow the command, as the `temporal` CLI's do (`factory queue --address H:P`)."""


def _embedded_address() -> str:
    try:
        return f"127.0.0.1:{dev_ports()[0]}"
    except ValueError:  # an invalid DARKFACTORY_DEV_PORT is reported when a command needs the server
        return "127.0.0.1 (DARKFACTORY_DEV_PORT)"


# Plain help, not typer's rich panels: those print a type after every option, flags included (`--json
# <bool>`), as if a flag took a value.
app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    epilog="--address and --namespace may also follow the command, as with `temporal`.",
)
for group in (runs, listing, people, transcript, audit, report, schedules, backlog, serve, prune, demo, serving):
    app.add_typer(group.app)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"factory (darkfactory) {version('darkfactory')}")
        raise typer.Exit()


@app.callback()
def root(
    address: str | None = typer.Option(
        None,
        "--address",
        metavar="HOST:PORT",
        help="The Temporal frontend, as `temporal --address` takes it; wins over TEMPORAL_ADDRESS. Neither: the "
        f"embedded dev server on {_embedded_address()} (started if none listens).",
    ),
    namespace: str | None = typer.Option(
        None,
        "--namespace",
        metavar="NAME",
        help="The Temporal namespace; wins over TEMPORAL_NAMESPACE (else: default).",
    ),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    """darkfactory: spec in, merged code out."""
    use_connection(address, namespace)
    if address is not None or namespace is not None:
        try:
            temporal_settings()  # a malformed flag fails here, before any command starts
        except UsageError as exc:
            fail(str(exc))


def hoist_global_flags(args: Sequence[str]) -> list[str]:
    """`--address`/`--namespace` (with their values) moved before the command, so they work after it too.
    Arguments after `--` are left alone."""
    hoisted: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest.extend(args[index:])
            break
        if arg.split("=", 1)[0] in GLOBAL_FLAGS:
            with_value = "=" in arg or index + 1 >= len(args)
            hoisted.extend(args[index : index + (1 if with_value else 2)])
            index += 1 if with_value else 2
            continue
        rest.append(arg)
        index += 1
    return [*hoisted, *rest]


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    args = list(argv) if argv is not None else sys.argv[1:]
    exit_cleanly(lambda: app(args=hoist_global_flags(args), prog_name="factory"))


if __name__ == "__main__":
    main()
