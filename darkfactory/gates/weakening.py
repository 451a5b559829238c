"""Test weakening: how a change deletes, skips or weakens the tests that already exist (part of the scope gate).

Judged on the syntax tree, not on text, so reformatting is not weakening but deleting a test, dropping or
editing an assert, or adding a skip mark is. A coding agent whose tests fail is tempted to make the tests agree
with the code; only task types with `allow_test_edits` may change existing tests.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from darkfactory.policy import is_test_path
from darkfactory.workspace import GitRun

_ASSERTING_CALLS = ("raises", "warns")
"""Call names that assert besides `assert*` ones: `pytest.raises`, `pytest.warns`."""
_SKIP_MARKS = frozenset({"skip", "skipif", "xfail"})
"""`pytest.mark.<name>`: marks that stop a test from counting."""
_SKIP_DISTINCT = frozenset({"skipIf", "skipUnless", "expectedFailure", "SkipTest", "skipTest", "importorskip"})
"""Skip helpers whose name alone is unmistakable (`unittest.skipIf`, `self.skipTest`, `pytest.importorskip`)."""
_SKIP_AMBIGUOUS = frozenset({"skip", "xfail"})
"""Skip helpers that count only on the pytest or unittest module (`pytest.skip(...)`, `unittest.skip`)."""
_TEST_MODULES = ("pytest", "_pytest", "unittest")


def weakened_tests(base_source: str | None, new_source: str | None, path: str) -> list[str]:
    """How a change weakens the tests of one file: base and new text (None: absent). Empty: not weakened.

    A new file weakens nothing; a deleted one weakens everything in it. Python files are compared test by
    test: removed tests, fewer or edited asserts, new skip/xfail marks. A base that does not parse cannot
    be weakened by this change; a new version that does not parse runs none of its tests.
    """
    if base_source is None:
        return []
    if new_source is None:
        return [f"{path}: test file deleted"]
    if not path.endswith(".py"):
        return []
    base_tree = _parse(base_source)
    if base_tree is None:
        return []
    new_tree = _parse(new_source)
    if new_tree is None:
        return [f"{path}: no longer parses, so none of its tests run"]
    base_tests = _test_functions(base_tree)
    new_tests = _test_functions(new_tree)
    problems: list[str] = []
    for name, base_fn in base_tests.items():
        new_fn = new_tests.get(name)
        if new_fn is None:
            problems.append(f"{path}:{base_fn.lineno} {name}: test removed")
            continue
        for problem in (_assert_changes(base_fn, new_fn), _case_changes(base_fn, new_fn)):
            if problem:
                problems.append(f"{path}:{new_fn.lineno} {name}: {problem}")
    problems.extend(_new_skips(base_tree, new_tree, path))
    return problems


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        # ValueError: null bytes, or undecodable bytes git handed over as surrogates.
        return None


_Function = ast.FunctionDef | ast.AsyncFunctionDef


def _test_functions(tree: ast.Module) -> dict[str, _Function]:
    """Test functions and methods by qualified name (`test_x`, `TestThing.test_y`), not nested in functions."""
    found: dict[str, _Function] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, _Function) and node.name.startswith("test"):
                found[f"{prefix}{node.name}"] = node

    visit(tree.body, "")
    return found


def _assertions(fn: _Function) -> list[ast.AST]:
    """assert statements and asserting calls (`self.assertEqual`, `mock.assert_called_once`, `pytest.raises`)."""
    found: list[ast.AST] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            found.append(node)
        elif isinstance(node, ast.Call):
            name = _call_name(node.func)
            if name.startswith("assert") or name in _ASSERTING_CALLS:
                found.append(node)
    return found


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _assert_changes(base_fn: _Function, new_fn: _Function) -> str:
    """What happened to a test's assertions, or "" when every base assertion is still there unchanged."""
    base = _assertions(base_fn)
    new = _assertions(new_fn)
    # ast.dump leaves out positions, so moving or reformatting an assert is not an edit.
    missing_keys = Counter(ast.dump(node) for node in base) - Counter(ast.dump(node) for node in new)
    missing: list[ast.AST] = []
    for node in base:
        key = ast.dump(node)
        if missing_keys[key] > 0:
            missing_keys[key] -= 1
            missing.append(node)
    if not missing and len(new) >= len(base):
        return ""
    shown = "; ".join(f"`{_snippet(node)}`" for node in missing[:3])
    if len(new) < len(base):
        fewer = f"{len(base) - len(new)} assert(s) fewer ({len(base)} → {len(new)})"
        return f"{fewer}; removed or changed: {shown}" if shown else fewer
    return f"assert(s) edited (expected values must not change): {shown}"


def _cases(fn: _Function) -> list[ast.AST]:
    """The cases of `@pytest.mark.parametrize` decorators: each element of a literal list, else the whole call."""
    cases: list[ast.AST] = []
    for decorator in fn.decorator_list:
        if not (isinstance(decorator, ast.Call) and _call_name(decorator.func) == "parametrize"):
            continue
        values = decorator.args[1] if len(decorator.args) > 1 else None
        values = next((kw.value for kw in decorator.keywords if kw.arg == "argvalues"), values)
        if isinstance(values, ast.List | ast.Tuple):
            cases.extend(values.elts)
        else:
            cases.append(decorator)
    return cases


def _case_changes(base_fn: _Function, new_fn: _Function) -> str:
    """Parametrized cases hold expected values too: removing or editing one weakens the test; adding is fine."""
    missing = Counter(ast.dump(node) for node in _cases(base_fn)) - Counter(ast.dump(node) for node in _cases(new_fn))
    if not missing:
        return ""
    shown = [node for node in _cases(base_fn) if ast.dump(node) in missing][:3]
    return "parametrize case(s) removed or changed: " + "; ".join(f"`{_snippet(node)}`" for node in shown)


def _snippet(node: ast.AST, limit: int = 100) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _new_skips(base_tree: ast.Module, new_tree: ast.Module, path: str) -> list[str]:
    """Skip/xfail marks and calls the change adds to existing scopes (new tests may skip what they like)."""
    base_scopes, base_marks = _skip_marks(base_tree)
    _new_scopes, new_marks = _skip_marks(new_tree)
    counts: Counter[tuple[str, str]] = Counter()
    first_line: dict[tuple[str, str], int] = {}
    for scope, kind, line in new_marks:
        if _in_new_test(scope, base_scopes):
            continue
        counts[(scope, kind)] += 1
        first_line.setdefault((scope, kind), line)
    counts.subtract(Counter((scope, kind) for scope, kind, _line in base_marks))
    return [
        f"{path}:{first_line[key]} {key[0] or 'module level'}: new `{key[1]}`"
        for key, count in sorted(counts.items(), key=lambda item: first_line.get(item[0], 0))
        if count > 0
    ]


def _in_new_test(scope: str, base_scopes: set[str]) -> bool:
    """Is the scope inside a test function or Test* class that the base does not have?"""
    parts = scope.split(".") if scope else []
    for index, name in enumerate(parts):
        qualified = ".".join(parts[: index + 1])
        if qualified not in base_scopes and (name.startswith("test") or name.startswith("Test")):
            return True
    return False


def _skip_marks(tree: ast.Module) -> tuple[set[str], list[tuple[str, str, int]]]:
    """All def/class qualified names, and every skip construct as (enclosing scope, dotted name, line).

    A decorator belongs to the function or class it decorates, so `@pytest.mark.skip` on `test_x` is in
    scope `test_x`; module-level `pytestmark = pytest.mark.skip` is in scope "".
    """
    modules: set[str] = set()
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _TEST_MODULES:
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _TEST_MODULES:
            for alias in node.names:
                imported[alias.asname or alias.name] = alias.name

    scopes: set[str] = set()
    marks: list[tuple[str, str, int]] = []
    stack: list[str] = []

    class Visitor(ast.NodeVisitor):
        def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
            stack.append(node.name)
            scopes.add(".".join(stack))
            self.generic_visit(node)
            stack.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

        def visit_Attribute(self, node: ast.Attribute) -> None:
            parts = _dotted(node)
            if parts and _is_skip(parts, modules):
                marks.append((".".join(stack), ".".join(parts), node.lineno))
                return
            self.generic_visit(node)

        def visit_Name(self, node: ast.Name) -> None:
            original = imported.get(node.id)
            if isinstance(node.ctx, ast.Load) and original in _SKIP_DISTINCT | _SKIP_AMBIGUOUS | _SKIP_MARKS:
                marks.append((".".join(stack), node.id, node.lineno))

    Visitor().visit(tree)
    return scopes, marks


def _dotted(node: ast.Attribute) -> list[str]:
    """`pytest.mark.skip` as ["pytest", "mark", "skip"]; [] when the chain does not start at a name."""
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return []
    parts.append(current.id)
    return parts[::-1]


def _is_skip(parts: list[str], modules: set[str]) -> bool:
    last = parts[-1]
    if len(parts) >= 2 and parts[-2] == "mark" and last in _SKIP_MARKS:
        return True
    if last in _SKIP_DISTINCT:
        return True
    return last in _SKIP_AMBIGUOUS and (parts[0] in modules or parts[0] in _TEST_MODULES)


def _blob(run: GitRun, sha: str, path: str) -> str | None:
    status, out, _err = run.status("cat-file", "blob", f"{sha}:{path}")
    return out if status == 0 else None


def weakened_in_change(repo_path: str, base_sha: str, sha: str, changes: Iterable[tuple[str, str]]) -> list[str]:
    """How the change weakens existing tests: `changes` are (path, git status letter) pairs. Empty: none."""
    run = GitRun(Path(repo_path))
    problems: list[str] = []
    for path, status in changes:
        # Only files that existed at the base can be weakened; new test files are welcome.
        if status == "A" or not is_test_path(path):
            continue
        base = _blob(run, base_sha, path)
        new = None if status == "D" else _blob(run, sha, path)
        problems.extend(weakened_tests(base, new, path))
    return problems
