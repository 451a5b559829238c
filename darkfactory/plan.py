"""Plan validation and scheduling order. Pure functions: workflows call them directly.

A plan is a DAG of tasks. It is valid when ids are unique, every dependency names a task in the plan,
no task depends on itself and there is no cycle. Errors name the offending task so the planner (or a
person) can fix it.
"""

from __future__ import annotations

from collections.abc import Iterable

from darkfactory.contracts import Plan, PlannedTask


class PlanError(ValueError):
    """The plan is not a valid DAG; the message names the problem."""


def validate_plan(plan: Plan) -> None:
    """Raise PlanError naming the first problem found; return None for a valid plan."""
    seen: set[str] = set()
    for task in plan.tasks:
        if task.id in seen:
            raise PlanError(f"task id {task.id!r} appears more than once; give every task a unique id")
        seen.add(task.id)
    for task in plan.tasks:
        for dep in task.depends_on:
            if dep == task.id:
                raise PlanError(f"task {task.id!r} depends on itself")
            if dep not in seen:
                raise PlanError(
                    f"task {task.id!r} depends on {dep!r}, which is not in the plan "
                    f"(known ids: {', '.join(sorted(seen))})"
                )
    cycle = find_cycle(plan.tasks)
    if cycle:
        raise PlanError("the plan has a dependency cycle: " + " -> ".join(cycle))


def find_cycle(tasks: Iterable[PlannedTask]) -> list[str]:
    """A cycle as a list of ids (first id repeated at the end), or [] when the graph is acyclic."""
    deps = {task.id: list(task.depends_on) for task in tasks}
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        colour[node] = grey
        stack.append(node)
        for dep in deps.get(node, []):
            if dep not in colour:
                continue
            if colour[dep] == grey:
                return [*stack[stack.index(dep) :], dep]
            if colour[dep] == white:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return []

    for node in deps:
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return []


def topological_order(plan: Plan) -> list[PlannedTask]:
    """Tasks in an order where every task comes after its dependencies; ties keep the plan's order."""
    validate_plan(plan)
    done: set[str] = set()
    ordered: list[PlannedTask] = []
    remaining = list(plan.tasks)
    while remaining:
        ready = [task for task in remaining if all(dep in done for dep in task.depends_on)]
        # validate_plan guarantees progress; the guard keeps a bug from looping a workflow forever.
        if not ready:
            raise PlanError("no task is ready although the plan validated; this is a bug")
        for task in ready:
            ordered.append(task)
            done.add(task.id)
        remaining = [task for task in remaining if task.id not in done]
    return ordered


def ready_tasks(plan: Plan, merged: set[str], started: set[str]) -> list[PlannedTask]:
    """Tasks not yet started whose dependencies are all merged, in plan order."""
    return [task for task in plan.tasks if task.id not in started and all(dep in merged for dep in task.depends_on)]


def blocked_by(plan: Plan, failed: set[str]) -> dict[str, str]:
    """Tasks that can never start because a (transitive) dependency ended without merging: id -> culprit."""
    blocked: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for task in plan.tasks:
            if task.id in blocked or task.id in failed:
                continue
            for dep in task.depends_on:
                if dep in failed or dep in blocked:
                    blocked[task.id] = blocked.get(dep, dep)
                    changed = True
                    break
    return blocked
