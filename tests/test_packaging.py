"""darkfactory as an index would ship it: a built wheel, installed without the checkout, runs the demo."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.conftest import ROOT
from tests.local_cli import local_env

RUN_FROM = """
import importlib.util, sys
# Only the wheel and the libraries it needs: no .pth file of this venv's editable install (`-S` skips them),
# and no checkout on the path, so the names below are what an install of the wheel provides.
sys.path[:] = [sys.argv[1], *[p for p in sys.path if "site-packages" not in p], sys.argv[2]]
for shadowing in ("workflows", "activities", "worker", "starter", "factory_cli"):
    assert importlib.util.find_spec(shadowing) is None, f"the wheel installs a top-level {shadowing!r}"
import darkfactory.cli, darkfactory.starter
assert darkfactory.cli.__file__.startswith(sys.argv[1]), darkfactory.cli.__file__  # the wheel's, not the checkout's
darkfactory.starter.main(["demo"])
"""


def test_a_wheel_installed_without_the_checkout_runs_the_demo(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("darkfactory-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in (
        "spec.md",
        "transcript.json",
        "repo/textkit/words.py",
        "repo/tests/test_words.py",
        "repo/pyproject.toml",
    ):
        assert f"darkfactory/cli/demo_files/{shipped}" in names, shipped
    assert not [name for name in names if name.split("/")[0] in ("workflows", "activities", "factory_cli")]
    assert not [name for name in names if name in ("worker.py", "starter.py")]

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    env = local_env(temporal_env, tmp_path / "home")
    demo = subprocess.run(
        [sys.executable, "-S", "-c", RUN_FROM, str(site), sysconfig.get_paths()["purelib"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "demo files are missing" not in demo.stderr
    assert "shipped" in demo.stdout and "The model in this demo was scripted" in demo.stdout
