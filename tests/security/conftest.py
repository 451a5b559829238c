"""The security suite: attacks on real processes and the real sandbox, counted into a table.

Every test here is one attack. It passes when the attack is blocked with a typed error (a tool error, a
sandbox errno, a gate failure, a cap's reason) and nothing outside the workspace changed. The session ends
with a table of attacks and blocks per family; a family below its required count fails the session.

The host stand-ins: a "worker" process whose initial environment holds a canary API key (what a sandboxed
command would find in `/proc/<pid>/environ` if it could see the worker), a honey file with a canary secret
outside every workspace, a loopback listener standing for the Temporal frontend, and a manifest of a host
directory that must be byte-for-byte the same after each attack.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from darkfactory import sandbox

FAMILIES = {
    "A": ("path and symlink escapes against the editor", 40),
    "B": ("shell escapes", 30),
    "C": ("sandbox escapes by the target's test code and setup", 20),
    "D": ("prompt injection with canary secrets", 24),
    "E": ("secrets in diffs", 20),
    "H": ("resource exhaustion", 13),
}
CANARY_KEY = "sk-ant-api03-CANARYWORKERKEY" + "Q" * 40
CANARY_HONEY = "HONEY-FILE-SECRET-7f3a9c"

_results: Counter[tuple[str, str]] = Counter()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("family")
        if marker is None and "tests/security/" in str(item.path):
            raise pytest.UsageError(f"{item.nodeid}: every security test needs @pytest.mark.family(...)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "family(letter): the security suite family an attack belongs to")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    marker = item.get_closest_marker("family")
    if marker is not None and (call.when == "call" or (call.when == "setup" and report.failed)):
        _results[(marker.args[0], "blocked" if report.passed else "not blocked")] += 1
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _results:
        return
    write = terminalreporter.write_line
    write("")
    write("security suite (tests/security): attacks per family")
    write(f"  {'family':<58} {'attacks':>7} {'blocked':>7} {'required':>8}")
    total = blocked_total = 0
    for letter, (title, required) in FAMILIES.items():
        blocked = _results[(letter, "blocked")]
        attacks = blocked + _results[(letter, "not blocked")]
        total += attacks
        blocked_total += blocked
        if attacks:
            write(f"  {letter} {title:<56} {attacks:>7} {blocked:>7} {required:>8}")
    write(f"  {'all':<58} {total:>7} {blocked_total:>7}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    # When the whole suite ran, every family must reach its count: a suite that silently lost attacks (a
    # parametrization emptied, a module skipped) is no suite. A run of some files or a -k selection is exempt.
    suite = set(Path(__file__).parent.glob("test_*.py"))
    selected = session.config.option.keyword or session.config.option.markexpr
    if selected or not suite <= {Path(item.path) for item in session.items}:
        return
    for letter, (title, required) in FAMILIES.items():
        ran = _results[(letter, "blocked")] + _results[(letter, "not blocked")]
        if ran < required:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            print(f"\nsecurity suite: family {letter} ({title}) ran {ran} attacks, fewer than {required}")


@pytest.fixture(scope="session", autouse=True)
def full_sandbox_tier() -> None:
    """The suite proves nothing in the degraded tier: refuse to run there instead of passing vacuously."""
    if os.environ.get(sandbox.SANDBOX_ENV_VAR, "auto") == "none":
        pytest.fail(f"{sandbox.SANDBOX_ENV_VAR}=none: the security suite needs the bwrap tier")
    assert sandbox.sandbox_tier() == "bwrap", "bubblewrap is not usable here (apt-get install -y bubblewrap)"
    assert shutil.which("slirp4netns"), "slirp4netns is missing (apt-get install -y slirp4netns)"


@dataclass
class Host:
    """What an attack must not reach or change."""

    root: Path
    """A host directory outside every workspace (the factory's home stands here), with the honey file."""
    honey: Path
    worker: subprocess.Popen[bytes]
    listener: socket.socket
    manifest: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def snapshot(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_symlink():
                found[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path)] = "dir"
        return found

    def assert_untouched(self, *texts: str) -> None:
        """Nothing changed on the host, nobody connected to it, the worker lives, and no text shows a secret."""
        assert self.snapshot() == self.manifest, "a file outside the workspace changed"
        assert self.worker.poll() is None, "the worker stand-in was killed"
        self.listener.setblocking(False)
        try:
            connection, _ = self.listener.accept()
        except BlockingIOError:
            pass
        else:
            connection.close()
            raise AssertionError("something connected to the host's loopback listener")
        for text in texts:
            assert CANARY_KEY not in text and CANARY_HONEY not in text, "a canary secret leaked"


@pytest.fixture
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("host")
    (root / "factory-home").mkdir()
    honey = root / "factory-home" / "credentials"
    honey.write_text(f"ANTHROPIC_API_KEY={CANARY_HONEY}\n")
    (root / "other-repo").mkdir()
    (root / "other-repo" / "main.py").write_text("print('another repository')\n")
    worker = subprocess.Popen(
        ["tail", "-f", "/dev/null"], env={"ANTHROPIC_API_KEY": CANARY_KEY, "PATH": "/usr/bin:/bin"}
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    found = Host(root=root, honey=honey, worker=worker, listener=listener)
    found.manifest = found.snapshot()
    try:
        yield found
    finally:
        worker.kill()
        worker.wait()
        listener.close()
