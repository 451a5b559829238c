"""The `factory` CLI's command groups; `starter.py` assembles them into one typer app.

| module | commands |
| --- | --- |
| `runs.py` | `run`, `status`, `cancel` |
| `people.py` | `queue`, `approve`, `reject`, `retry` |
| `audit.py` | `audit` (a run's hash-chained trail, `--verify`) |
| `watch.py` | `status --watch` (the run redrawn in place; no command of its own) |
| `report.py` | `report` (a run's DAG, attempts, gates, timeline, tokens and cost; `--html`, `--json`) |
| `listing.py` | `runs` (every run, found by trigger, repository and status) |
| `schedules.py` | `schedule create|list|describe|pause|unpause|trigger|backfill|delete` |
| `backlog.py` | `backlog add|list|remove` |
| `serve.py` | `serve` (the webhooks; its HTTP app is `serve_app.py`) |
| `demo.py` | `demo` |
| `serving.py` | `dev` |
| `inputs.py` | turning command-line input into a `RunRequest` (no command) |
| `session.py` | the Temporal client and, in local mode, the in-process worker (no command) |
| `launch.py` | starting a FactoryRun, the one way every trigger does it (no command) |

The startup check both `factory run` and `factory-worker` make is `darkfactory/strict_sandbox.py`.
"""
