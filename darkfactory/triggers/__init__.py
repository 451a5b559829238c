"""What starts runs without a person typing `factory run`: Temporal Schedules, GitHub issues, monitoring
alerts and the backlog. Every trigger ends in the same FactoryRun; this package holds what they share
that needs no Temporal client (ids, specs, signatures, the `factory serve` config; its HTTP app is
`factory_cli/serve_app.py`).

| module | what |
| --- | --- |
| `ids.py` | workflow ids per trigger (a duplicate trigger finds the run it already started) |
| `comments.py` | what a run posts back on its issue (the outcome, an escalation and how to answer it) |
| `signatures.py` | webhook signatures and tokens, over the raw body, in constant time |
| `serve_config.py` | `factory serve`'s TOML config, validated with errors that name the key |
| `github_events.py` | which GitHub deliveries ask for a run (label, `/factory run` from a trusted author) |
| `alerts.py` | Alertmanager and Sentry payloads to a diagnosis spec and a dedupe key |
"""
