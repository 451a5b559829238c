"""The `factory` CLI's command groups; `starter.py` assembles them into one typer app.

| module | commands |
| --- | --- |
| `runs.py` | `run`, `status`, `cancel` |
| `people.py` | `queue`, `approve`, `reject`, `retry` |
| `demo.py` | `demo` |
| `serving.py` | `dev` |
| `inputs.py` | turning command-line input into a `RunRequest` (no command) |
| `session.py` | the Temporal client and, in local mode, the in-process worker (no command) |

The startup check both `factory run` and `factory-worker` make is `darkfactory/strict_sandbox.py`.
"""
