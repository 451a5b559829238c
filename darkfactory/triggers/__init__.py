"""What starts runs without a person typing `factory run`: Temporal Schedules, GitHub issues, monitoring
alerts and the backlog. Every trigger ends in the same FactoryRun; this package holds what they share
that needs no Temporal client (ids, specs, signatures, the `factory serve` config and HTTP app).

| module | what |
| --- | --- |
| `ids.py` | workflow ids per trigger (a duplicate trigger finds the run it already started) |
"""
