"""The project's own rules, checked: README and CI agree, the layers stay apart, lint and types are clean."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [block.strip() for block in blocks]


def test_readme_opens_with_the_demo_and_the_test_command_and_ci_runs_the_latter() -> None:
    demo, tests = _readme_commands()[:2]
    assert demo.endswith("factory demo")
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def _modules(path: Path) -> set[str]:
    """Every module the file imports, in full (`darkfactory.workflows.task`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _modules(path)}


LINKED = ("workflows", "activities", "cli", "worker", "starter")
"""The design card's top-level folders and modules, linked into the package as `darkfactory.<name>`."""
ORCHESTRATION = tuple(f"darkfactory.{name}" for name in LINKED)


def _domain_library() -> list[Path]:
    # rglob does not enter the linked folders; the linked modules (worker.py, starter.py) are skipped by hand.
    return [path for path in (ROOT / "darkfactory").rglob("*.py") if not path.is_symlink()]


def test_the_domain_library_knows_nothing_of_temporal() -> None:
    offenders = [
        str(path)
        for path in _domain_library()
        if "temporalio" in _imports(path)
        or any(module == name or module.startswith(name + ".") for module in _modules(path) for name in ORCHESTRATION)
    ]
    assert offenders == []


def test_every_importable_name_lives_under_darkfactory() -> None:
    """Installed, the top-level folders exist only as `darkfactory.workflows` etc.: code that imports them by
    their folder names would work in the checkout and break (or shadow a user's own `workflows`) when installed."""
    for name in LINKED:
        link = ROOT / "darkfactory" / (name if name not in ("worker", "starter") else f"{name}.py")
        assert link.is_symlink(), f"darkfactory/{link.name} should link the top-level {name}"
    top_level = {"workflows", "activities", "factory_cli", "worker", "starter"}
    sources = [
        path
        for path in ROOT.rglob("*.py")
        if not {".venv", "build", "demo_files", "examples"} & set(path.relative_to(ROOT).parts)
    ]
    offenders = [
        f"{path.relative_to(ROOT)}: imports {', '.join(sorted(_imports(path) & top_level))}"
        for path in sources
        if _imports(path) & top_level
    ]
    assert offenders == []


def test_the_cli_the_workflows_and_a_starting_worker_do_not_wait_for_the_model_sdk() -> None:
    # Importing anthropic takes seconds: every `factory` command would pay it, and so would a worker that
    # replaces a killed one before it can poll (the worker loads it in a thread beside its start).
    probe = (
        "import sys, darkfactory.starter, darkfactory.workflows, darkfactory.worker; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'anthropic'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_workflow_code_does_no_io() -> None:
    forbidden_modules = {
        "subprocess",
        "os",
        "time",
        "random",
        "socket",
        "shutil",
        "pathlib",
        "git",
        "anthropic",
        "httpx",
    }
    forbidden_calls = {"open", "print", "input"}
    problems = []
    for path in (ROOT / "workflows").rglob("*.py"):
        tree = ast.parse(path.read_text())
        problems += [f"{path.name}: imports {m}" for m in _imports(path) & forbidden_modules]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in forbidden_calls:
                problems.append(f"{path.name}:{node.lineno}: calls {node.func.id}()")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"now", "utcnow", "today"}
                and not (isinstance(node.value, ast.Name) and node.value.id == "workflow")
            ):
                problems.append(f"{path.name}:{node.lineno}: reads the clock ({node.attr})")
    assert problems == []


def test_ruff_is_clean() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_mypy_strict_is_clean_on_the_domain_library() -> None:
    result = subprocess.run([str(BIN / "mypy"), "darkfactory"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_the_readme_serve_config_example_is_a_valid_config() -> None:
    from darkfactory.triggers.serve_config import parse_serve_config

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    [example] = [block for block in blocks if "[repos." in block]
    config = parse_serve_config(example, "README.md")
    assert config.repos["acme/widgets"].label == "factory"
    assert config.repos["acme/widgets"].alert_labels == {"service": "widgets"}


def test_the_readme_policy_example_is_a_valid_policy() -> None:
    from darkfactory.policy import parse_policy

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    [example] = [block for block in blocks if "protected" in block]
    policy = parse_policy(example)
    assert policy.protected == ["migrations/**"]
    assert policy.commands.test == ["python", "-m", "pytest", "-q"]
    assert policy.escalation.default_action == "reject"
