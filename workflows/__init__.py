"""Deterministic orchestration only: no I/O, clocks, randomness or environment.

- `factory_run.py`  FactoryRunWorkflow: prepare -> plan -> tasks -> merge -> verify -> ship -> summary
- `task.py`         TaskWorkflow: workspace -> durable agent loop -> gates -> retry with feedback -> escalate
- `merge_queue.py`  MergeQueue: ready tasks merge into the integration branch in batches, checked once each
- `merge_batch.py`  MergeBatch: one batch merged, checked (stacked on the one in flight), bisected when red
- `shipping.py`     Shipping: ship the verified head, post-ship check, rollback, wait for a person
- `run_book.py`     RunBook: the run's state and the search attributes that mirror it; RunFailed
- `held_out.py`     held-out acceptance tests checked on the task's base (rewritten or dropped when they do not bite)
- `steps.py`        retry policies, task queues per resource class, activity failures ending a task
- `backlog.py`      BacklogWorkflow: one per repository; queued specs become runs by priority, capped, in hours
- `escalation.py`   DecisionDesk: waiting for a person (search attributes, memo, deadline), recording decisions
"""

from __future__ import annotations

from darkfactory.workflows.backlog import BacklogWorkflow
from darkfactory.workflows.factory_run import FactoryRunWorkflow
from darkfactory.workflows.task import TaskWorkflow

WORKFLOWS = [FactoryRunWorkflow, TaskWorkflow, BacklogWorkflow]

__all__ = ["WORKFLOWS", "BacklogWorkflow", "FactoryRunWorkflow", "TaskWorkflow"]
