"""Which tests a change affects: by per-test coverage of the base, plus the tests it adds or edits; by
grimp's import graph where coverage cannot say. Also: the test command's own paths and the suite's files.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from darkfactory.gates.common import budget, inside, is_regular, read_regular_file, scratch_dir, tree_text
from darkfactory.gates.context import GateContext
from darkfactory.gates.junit import source_roots
from darkfactory.gates.trees import is_conftest, is_pytest_config
from darkfactory.policy import is_test_path
from darkfactory.sandbox import run_command
from darkfactory.toolbox import IMPORT_TOOLS, tool_dir, tool_script, tool_site
from darkfactory.workspace import GitRun

MAX_TEST_FILES = 5000
"""Test files handed to the import graph."""


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


@dataclass(frozen=True)
class Affected:
    """The tests a change affects: by coverage, the base's tests that executed a file it changed; the tests it
    added or edited; and, where coverage cannot say, the test files that import a changed module."""

    tests: frozenset[str] = frozenset()
    """Node ids of base tests that executed a changed file."""
    files: frozenset[str] = frozenset()
    """Test files affected as a whole."""
    prefixes: frozenset[str] = frozenset()
    """Directories whose every test is affected (a changed conftest.py, where test edits are allowed)."""
    everything: bool = False
    """Nothing could be measured (or the pytest configuration changed): every test is affected."""
    how: tuple[str, ...] = ()
    """How the set was found, for notes."""

    def covers(self, nodeid: str) -> bool:
        path = nodeid.split("::", 1)[0]
        return (
            self.everything
            or nodeid in self.tests
            or path in self.files
            or any(path.startswith(prefix) for prefix in self.prefixes)
        )

    def first_files(self) -> list[str]:
        """Test files to run before the whole suite (empty when that would be the whole suite anyway)."""
        if self.everything or self.prefixes:
            return []
        return sorted({nodeid.split("::", 1)[0] for nodeid in self.tests} | self.files)


def affected_tests(ctx: GateContext, tree: Path, extra_tests: Sequence[str] = ()) -> Affected:
    """The tests the change `ctx.base_sha..ctx.sha` affects, as they stand in `tree` (the tree the suite runs in).

    `extra_tests`: test files only `tree` has (the change's version of an edited test file, run beside it).
    """
    run = GitRun(Path(ctx.repo_path))
    changed = [p for p in run("diff", "--name-only", "--no-renames", "-z", ctx.base_sha, ctx.sha).split("\0") if p]
    allow_edits = ctx.policy.rules_for(ctx.task_type).allow_test_edits or ctx.purpose != "task"
    files = {path for path in [*changed, *extra_tests] if is_test_file(path) and is_regular(tree, path)}
    prefixes: set[str] = set()
    how: list[str] = []
    everything = False
    if allow_edits:
        for path in changed:
            if is_conftest(path):
                directory = os.path.dirname(path)
                prefixes.add(f"{directory}/" if directory else "")
            elif is_pytest_config(path):
                everything = True
    baseline = ctx.baseline
    tests: set[str] = set()
    by_graph: list[str] = []
    for path in changed:
        if not path.endswith(".py") or is_test_path(path):
            continue
        if baseline is None or not baseline.coverage:
            by_graph.append(path)
            continue
        executed = baseline.executed_by_some_test(path)
        if executed:
            tests |= baseline.tests_executing({path})
        elif executed is False or (
            # Only imported, never run inside a test (constants, definitions); or added since the measured base.
            not run.ok("cat-file", "-e", f"{baseline.base_sha}:{path}")
            and run.ok("cat-file", "-e", f"{ctx.base_sha}:{path}")
        ):
            by_graph.append(path)
    if tests:
        how.append("coverage")
    if by_graph and not everything:
        found = import_graph(ctx, tree, by_graph)
        if found is None:
            everything = True
            how.append("every test (the import graph could not be built)")
        else:
            files |= found
            how.append("import graph")
    return Affected(frozenset(tests), frozenset(files), frozenset(prefixes), everything, tuple(how))


def import_graph(ctx: GateContext, tree: Path, changed: Sequence[str]) -> set[str] | None:
    """Test files in `tree` that import one of `changed`, directly or through other modules (grimp, run in the
    sandbox: it reads code the change wrote). None: no graph could be built."""
    tests = _test_files(tree, _test_roots(ctx))
    if not tests:
        return set()
    tools = tool_dir(ctx.env.root.parent, "imports", IMPORT_TOOLS)
    with scratch_dir(ctx) as scratch:
        token = uuid.uuid4().hex[:12]
        request, answer = scratch / f"imports-{token}.json", scratch / f"imports-{token}.out.json"
        request.write_text(
            json.dumps(
                {
                    "roots": source_roots(tree),
                    "changed": [str(tree / path) for path in changed],
                    "tests": [str(tree / path) for path in tests],
                }
            )
        )
        result = run_command(
            ["python", str(tool_script(tools, "import_map.py")), str(request), str(answer)],
            cwd=tree,
            env={"PYTHONPATH": str(tool_site(tools))},
            path_prefix=[ctx.env.bin_dir],
            readonly_paths=[*ctx.env.readonly_paths, tools],
            writable_paths=[scratch],
            timeout_s=budget(ctx, 300.0),
            on_tick=ctx.on_tick,
        )
        data = read_regular_file(answer, 16 << 20) if result.ok else None
    try:
        parsed = json.loads(data) if data is not None else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("affected"), list):
        return None
    prefix = str(tree) + os.sep
    return {path[len(prefix) :] for path in parsed["affected"] if isinstance(path, str) and path.startswith(prefix)}
