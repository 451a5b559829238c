"""Tools the factory brings into a target's sandbox: copies of its own mypy, coverage.py with pytest-cov, grimp.

Each set is copied from this installation once per cache root (offline, like pytest into a target
environment), beside the target environments and never inside them: a tool goes on PYTHONPATH only for the
run that needs it, so the target's own test runs see exactly the target's packages. A set is built in a
staging directory and renamed into place, so a concurrent or crashed build never leaves half a copy in use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path

from darkfactory.target_env import compile_site, seed_distributions, site_packages

COVERAGE_TOOLS = ("coverage", "pytest-cov")
"""Per-test coverage of the base's suite. Without their requirements: pytest and pluggy are the target's."""
IMPORT_TOOLS = ("grimp",)
"""The import graph, for affected tests when there is no coverage."""
SCRIPTS = ("coverage_map.py", "import_map.py")
"""Our own helpers that run inside the sandbox (`darkfactory/sandboxed/`), with these tools importable."""


def tool_dir(cache_root: Path, name: str, distributions: Sequence[str], *, requirements: bool = True) -> Path:
    """A directory with `distributions` (and with `requirements`, what they require) under
    `site_packages(dir)` and our sandboxed scripts under `dir/scripts`, built once per version set."""
    digest = hashlib.sha256(f"{sys.version}|{requirements}|bytecode".encode())
    for distribution in distributions:
        digest.update(f"|{distribution}=={metadata.version(distribution)}".encode())
    scripts = {script: _script_source(script) for script in SCRIPTS}
    for script, source in scripts.items():
        digest.update(f"|{script}\0".encode() + source)
    final = cache_root / f"tools-{name}-{digest.hexdigest()[:16]}"
    if (final / ".ready").exists():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tools-", dir=cache_root))
    try:
        seed_distributions(staging, distributions, requirements=requirements)
        compile_site(site_packages(staging))
        (staging / "scripts").mkdir()
        for script, source in scripts.items():
            (staging / "scripts" / script).write_bytes(source)
        (staging / ".ready").write_text(name)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / ".ready").exists():  # a leftover that is not ours to keep
                shutil.rmtree(final, ignore_errors=True)
                os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def tool_site(tools: Path) -> Path:
    """Where a tool directory's packages are: put it on PYTHONPATH (and bind `tools` read-only)."""
    return site_packages(tools)


def tool_script(tools: Path, script: str) -> Path:
    return tools / "scripts" / script


def _script_source(script: str) -> bytes:
    return resources.files("darkfactory.sandboxed").joinpath(script).read_bytes()
