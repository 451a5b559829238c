"""Which test files import a changed module, directly or through other modules, by grimp's import graph.

    python import_map.py REQUEST_JSON OUT_JSON

The request is `{"roots": [directories on sys.path], "changed": [changed .py files], "tests": [test files]}`
(paths absolute). grimp graphs the first-party packages found under the roots; a test file's own imports
are read from its syntax tree (test directories are often not packages, so grimp cannot graph them). The
answer is `{"affected": [test files], "packages": [...]}`, or `{"error": "..."}` when no graph could be built.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from collections.abc import Iterable

import grimp


def module_name(path: str, roots: list[str]) -> str | None:
    """The dotted name `path` is imported by, relative to the innermost root that holds it."""
    for root in sorted(roots, key=len, reverse=True):
        if path.startswith(root + os.sep):
            parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join(parts) if parts and all(part.isidentifier() for part in parts) else None
    return None


def packages_under(roots: Iterable[str]) -> list[str]:
    found: list[str] = []
    for root in roots:
        for entry in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            if entry.isidentifier() and os.path.isfile(os.path.join(root, entry, "__init__.py")):
                found.append(entry)
    return sorted(set(found))


def imported_by(path: str, own_name: str | None) -> set[str]:
    """Modules a file imports, with every parent package (importing `a.b` runs `a/__init__.py` first)."""
    with open(path, "rb") as handle:
        tree = ast.parse(handle.read())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (own_name or "").split(".")[: -node.level]
                base = ".".join([*package, *([base] if base else [])])
            if base:
                names.add(base)
                # `from pkg import sub` may import a submodule; unknown names are simply not in the graph.
                names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {".".join(name.split(".")[:end]) for name in names for end in range(1, name.count(".") + 2)}


def affected(request: dict[str, list[str]]) -> dict[str, object]:
    roots = [os.path.realpath(root) for root in request["roots"]]
    packages = packages_under(roots)
    changed = {name for path in request["changed"] if (name := module_name(path, roots))}
    sys.path[:0] = roots
    graph = grimp.build_graph(*packages, cache_dir=None) if packages else None
    modules = graph.modules if graph is not None else set()
    hits: list[str] = []
    for test in request["tests"]:
        try:
            reached = imported_by(test, module_name(test, roots))
        except (OSError, SyntaxError, ValueError):
            hits.append(test)  # unreadable: it may import anything
            continue
        for name in list(reached):
            if graph is not None and name in modules:
                reached |= graph.find_upstream_modules(name)
        if reached & changed:
            hits.append(test)
    return {"affected": hits, "packages": packages}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        request = json.load(handle)
    try:
        answer = affected(request)
    except Exception as exc:  # any failure means "unknown", which the gate treats as "every test affected"
        answer = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    with open(argv[1], "w", encoding="utf-8") as handle:
        json.dump(answer, handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
