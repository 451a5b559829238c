"""darkfactory as an index would ship it: a built wheel, installed without the checkout, runs the demo."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.conftest import ROOT
from tests.local_cli import local_env

RUN_FROM = """
import sys
sys.path.insert(0, sys.argv[1])
import factory_cli, starter
assert factory_cli.__file__.startswith(sys.argv[1]), factory_cli.__file__  # the wheel's, not the checkout's
starter.main(["demo"])
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
        assert f"factory_cli/demo_files/{shipped}" in names, shipped

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
        [sys.executable, "-c", RUN_FROM, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "demo files are missing" not in demo.stderr
    assert "shipped" in demo.stdout and "The model in this demo was scripted" in demo.stdout
