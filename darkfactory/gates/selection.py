"""Which tests to run first: the test command's own paths, the suite's test files, and those a change
touches or that import a module it changed.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

from darkfactory.gates.common import inside, is_regular, python_files, tree_text
from darkfactory.gates.context import GateContext

MAX_TEST_FILES = 5000
"""Test files scanned for imports of the changed modules."""


_VALUE_OPTIONS = frozenset(
    {"-k", "-m", "-p", "-c", "-o", "--override-ini", "--ignore", "--ignore-glob", "--deselect", "--rootdir",
     "--confcutdir", "--basetemp", "--junitxml", "--junit-xml", "--log-file", "--cov", "--cov-config",
     "--cov-report", "--maxfail", "--tb", "-W", "--durations"}
)  # fmt: skip
"""pytest options whose value is the next argument (which may look like a path)."""


def split_test_command(command: Sequence[str], tree: Path) -> tuple[list[str], list[str]]:
    """(the command without its positional test paths, those paths). Selecting tests means replacing the
    paths: pytest given a directory and a file in it runs the directory's tests once, not the file's."""
    start = next((index + 1 for index, part in enumerate(command[:3]) if "pytest" in part), 0)
    kept, paths = list(command[:start]), list[str]()
    previous = ""
    for part in command[start:]:
        target = part.split("::", 1)[0]
        is_path = (
            bool(target)
            and not part.startswith("-")
            and previous not in _VALUE_OPTIONS
            and os.path.lexists(tree / target)
        )
        (paths if is_path else kept).append(part)
        previous = part
    return kept, paths


def is_test_file(path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _test_roots(ctx: GateContext) -> list[str]:
    """Where the suite's tests live: the command's paths, else `testpaths` from the target's configuration."""
    _, paths = split_test_command(ctx.test_command, ctx.worktree)
    if paths:
        return [path.split("::", 1)[0] for path in paths]
    pyproject = tree_text(ctx.worktree, "pyproject.toml")
    if pyproject is not None:
        try:
            pytest_config = tomllib.loads(pyproject).get("tool", {}).get("pytest", {})
        except (tomllib.TOMLDecodeError, AttributeError):
            pytest_config = {}
        if isinstance(pytest_config, dict):
            options = pytest_config.get("ini_options", pytest_config)
            testpaths = options.get("testpaths") if isinstance(options, dict) else None
            if isinstance(testpaths, str):
                return testpaths.split()
            if isinstance(testpaths, list):
                return [str(path) for path in testpaths]
    for name, section in (("pytest.ini", "pytest"), ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        text = tree_text(ctx.worktree, name)
        if text is None:
            continue
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(configparser.Error):
            parser.read_string(text)
            if parser.has_option(section, "testpaths"):
                return parser.get(section, "testpaths").split()
    return []


_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "venv", "env", "build", "dist", "site-packages"})


def _test_files(tree: Path, roots: Sequence[str]) -> list[str]:
    """Test files under `roots` (the whole tree when empty), without following symlinks."""
    found: list[str] = []
    for root in roots or ["."]:
        start = inside(tree, root) if root != "." else tree
        if start is None:
            continue
        if is_regular(tree, root):
            found.append(os.path.normpath(root))
            continue
        for directory, dirs, names in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
            for name in sorted(names):
                relative = os.path.relpath(os.path.join(directory, name), tree)
                if is_test_file(relative) and is_regular(tree, relative):
                    found.append(relative)
                if len(found) >= MAX_TEST_FILES:
                    return found
    return list(dict.fromkeys(found))


def _module_patterns(path: str) -> list[re.Pattern[str]]:
    """How a test would import the module at `path`: its dotted name anywhere, its own name in an import."""
    parts = path[: -len(".py")].split("/")
    if parts[0] == "src":
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts:
        return []
    dotted = re.escape(".".join(parts))
    return [re.compile(rf"(?<![\w.]){dotted}(?!\w)"), re.compile(rf"\b{re.escape(parts[-1])}\b")]


def affected_tests(ctx: GateContext) -> list[str]:
    """Test files the change touches or that import a module it changed (a cheap grep, not an import graph)."""
    roots = _test_roots(ctx)
    in_suite = set(_test_files(ctx.worktree, roots))
    changed = python_files(ctx)
    affected = {path for path in changed if path in in_suite}
    patterns = [p for path in changed if not is_test_file(path) for p in _module_patterns(path)]
    if not patterns:
        return sorted(affected)
    for test in sorted(in_suite - affected):
        source = tree_text(ctx.worktree, test) or ""
        imports = "\n".join(line for line in source.splitlines() if line.lstrip().startswith(("import ", "from ")))
        if any(pattern.search(imports) for pattern in patterns):
            affected.add(test)
    return sorted(affected)
