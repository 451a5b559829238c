"""Temporal activities: thin adapters from the domain library to Temporal (heartbeats, errors, timeouts).

- `model.py`      planner and agent turns (one model call each)
- `workspace.py`  git: prepare, open workspace, run tools + snapshot, merge, ship, release
- `gates.py`      the deterministic gates on one commit
- `errors.py`     domain errors -> ApplicationError (retryable or not)
- `context.py`    structlog context and heartbeats for every activity
"""
