"""Real third-party packages as target repositories: their own sdists and test suites, each with one seeded bug.

Nobody here wrote these suites, so a green run proves the factory works on code it was not shaped around,
and a red one that stays off main proves the gates cannot be fooled by it. Each sdist is fetched once with
pip, checked against its pinned hash and cached; without network a test is skipped, never failed
(`SdistUnavailable`). `bench/seeded_bugs.py` runs the factory over all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git


class SdistUnavailable(RuntimeError):
    """The package index could not be reached; the message says what pip said."""


@dataclass(frozen=True)
class SeededPackage:
    """A pinned sdist and one bug seeded in it: a line replaced by a plausible slip, and a wrong fix for it."""

    name: str
    version: str
    sha256: str
    """From PyPI's index; a cached file that does not match is an error, not a skip."""
    source_file: str
    upstream_line: str
    seeded_line: str
    wrong_line: str
    """A plausible fix that is not one: the bug's own tests still fail with it."""
    bug: str

    @property
    def sdist(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


CACHETOOLS = SeededPackage(
    name="cachetools",
    version="5.5.2",
    sha256="1a661caa9175d26759571b2e19580f9d6393969e5dfca11fdb1f947a23e640d4",
    source_file="src/cachetools/keys.py",
    upstream_line="    key += tuple(type(v) for v in args)\n",
    seeded_line="    key += tuple(type(v) for v in kwargs)\n",
    wrong_line="    key += tuple(type(v) for v in kwargs.values())\n",
    bug="typedkey keys on the keyword names' types, not the positional arguments': typedkey(1) == typedkey(1.0)",
)
PACKAGES = (
    CACHETOOLS,
    SeededPackage(
        name="inflection",
        version="0.5.1",
        sha256="1a29730d366e996aaacffb2f1f1cb9593dc38e2ddd30c91250c6dde09ea9b417",
        source_file="inflection/__init__.py",
        upstream_line="    if number % 100 in (11, 12, 13):\n",
        seeded_line="    if number % 100 in (11, 12):\n",
        wrong_line="    if number % 10 in (11, 12, 13):\n",
        bug="ordinal(13) is 'rd' instead of 'th'",
    ),
    SeededPackage(
        name="toolz",
        version="1.2.0",
        sha256="9667a038e9d6ecba37995e26cb2f59ec6420b6ad8dd9677de59db9b956b08490",
        source_file="toolz/itertoolz.py",
        upstream_line="        d[item] += 1\n",
        seeded_line="        d[item] = 1\n",
        wrong_line="        d[item] += 2\n",
        bug="frequencies() counts every value once",
    ),
    SeededPackage(
        name="tabulate",
        version="0.10.0",
        sha256="e2cfde8f79420f6deeffdeda9aaec3b6bc5abce947655d17ac662b126e48a60d",
        source_file="tabulate/__init__.py",
        upstream_line='    fmt = "{0:>%ds}" % width\n',
        seeded_line='    fmt = "{0:>%ds}" % (width - 1)\n',
        wrong_line='    fmt = "{0:>%ds}" % (width + 1)\n',
        bug="right-aligned cells are padded one character short",
    ),
    SeededPackage(
        name="isodate",
        version="0.7.2",
        sha256="4cd1aa0f43ca76f4a6c6c0292a85f40b35ec2e43e315b59f06e6d32171a953e6",
        source_file="src/isodate/isotzinfo.py",
        upstream_line="    return FixedOffset(tzsign * tzhour, tzsign * tzmin, tzname)\n",
        seeded_line="    return FixedOffset(tzsign * tzhour, tzmin, tzname)\n",
        wrong_line="    return FixedOffset(tzhour, tzsign * tzmin, tzname)\n",
        bug="a negative UTC offset keeps its minutes positive: -05:30 becomes -04:30",
    ),
    SeededPackage(
        name="iniconfig",
        version="2.3.1",
        sha256="67f4b9c50da0dedf52af349e7749a80a9057a5031199791b906c3bb3ae878960",
        source_file="src/iniconfig/_parse.py",
        upstream_line="    return c in COMMENTCHARS\n",
        seeded_line='    return c == "#"\n',
        wrong_line='    return c in "#"\n',
        bug="lines starting with ';' are no longer comments",
    ),
)


def cache_dir() -> Path:
    configured = os.environ.get("DARKFACTORY_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "darkfactory-tests"


def fetch_sdist(package: SeededPackage) -> Path:
    """The pinned sdist from the cache, downloading it first if needed."""
    cache = cache_dir()
    sdist = cache / package.sdist
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # Download into a private directory and rename: two sessions filling the cache never see half a file.
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            argv += ["--retries", "1", "--timeout", "30", "--dest", scratch, f"{package.name}=={package.version}"]
            try:
                download = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired:
                raise SdistUnavailable(f"downloading {package.sdist} took over 300 s (no network?)") from None
            fetched = Path(scratch) / package.sdist
            if download.returncode != 0 or not fetched.exists():
                tail = "\n".join((download.stderr or download.stdout).strip().splitlines()[-3:])
                raise SdistUnavailable(f"cannot download {package.sdist} from the package index: {tail}")
            os.replace(fetched, sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != package.sha256:
        raise RuntimeError(f"{sdist} has sha256 {digest}, expected {package.sha256}; delete it to refetch")
    return sdist


def seeded_repo(dest: Path, package: SeededPackage) -> Path:
    """`dest` as a git repository on `main`: the upstream sdist in one commit, the seeded bug in the next."""
    sdist = fetch_sdist(package)
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        with tarfile.open(sdist) as archive:
            archive.extractall(scratch, filter="data")
        (unpacked,) = Path(scratch).iterdir()
        shutil.move(unpacked, dest)
    # setuptools' build output is not source; PKG-INFO at the top is the sdist's own metadata and stays.
    for egg_info in list(dest.rglob("*.egg-info")):
        shutil.rmtree(egg_info)
    git(dest, "init", "-q", "-b", "main")
    # The sdist is the source of truth: files its .gitignore names (a generated version.py) are part of it.
    git(dest, "add", "-A", "--force")
    git(dest, "commit", "-q", "-m", f"upstream {package.name} {package.version}")
    source = dest / package.source_file
    text = source.read_text()
    assert text.count(package.upstream_line) == 1, f"{package.source_file} no longer has the line to seed"
    # The scripted agent edits by str_replace, which needs the seeded and the wrong line to be unique.
    assert package.seeded_line not in text and package.wrong_line not in text, f"{package.name}: lines not unique"
    source.write_text(text.replace(package.upstream_line, package.seeded_line))
    git(dest, "commit", "-q", "-am", "seed bug")
    return dest


def sdist_repo(dest: Path, package: SeededPackage = CACHETOOLS) -> Path:
    """`seeded_repo` for a test: skipped, never failed, when the package index cannot be reached."""
    try:
        return seeded_repo(dest, package)
    except SdistUnavailable as exc:
        pytest.skip(str(exc))


SOURCE_FILE = CACHETOOLS.source_file
UPSTREAM_LINE = CACHETOOLS.upstream_line
SEEDED_LINE = CACHETOOLS.seeded_line


# --------------------------------------------------------------------------------------------------
# Scripted attempts on a seeded package


FIX_TASK = "fix-bug"
APPROVE = {
    "content": [
        {"type": "tool_use", "name": "submit_review", "input": {"verdict": "approve", "summary": "Looks right."}}
    ]
}
"""A reviewer that approves everything: only the deterministic gates stand between a wrong fix and main."""


def edit_attempt(path: str, old: str, new: str) -> list[dict[str, Any]]:
    """One attempt: a single str_replace, then the agent stops."""
    call = {"command": "str_replace", "path": path, "old_str": old, "new_str": new}
    return [
        {"content": [{"type": "tool_use", "name": "str_replace_based_edit_tool", "input": call}]},
        {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"},
    ]


def wrong_fix(package: SeededPackage) -> list[dict[str, Any]]:
    return edit_attempt(package.source_file, package.seeded_line, package.wrong_line)


def right_fix_after_wrong(package: SeededPackage) -> list[dict[str, Any]]:
    """The right fix, made on top of the wrong one (an attempt continues from the previous attempt's tree)."""
    return edit_attempt(package.source_file, package.wrong_line, package.upstream_line)


def fix_transcript(
    directory: Path,
    package: SeededPackage,
    task_type: str,
    *attempts: list[dict[str, Any]],
    task_id: str = FIX_TASK,
    name: str = "transcript",
) -> Path:
    """A transcript: one task with no acceptance criteria (so no held-out tests), the given attempts, and a
    reviewer that approves every one."""
    plan = {
        "summary": f"Fix: {package.bug}.",
        "tasks": [
            {
                "id": task_id,
                "title": f"Fix {package.name}: {package.bug}"[:200],
                "type": task_type,
                "instructions": f"In {package.source_file}: {package.bug}. Fix it.",
            }
        ],
    }
    data = {
        "description": f"{package.name} {package.version} with a seeded bug; no acceptance criteria, a reviewer "
        "that approves everything.",
        "plan": {"content": [{"type": "tool_use", "name": "submit_plan", "input": plan}]},
        "tasks": {task_id: list(attempts)},
        "reviews": {task_id: [APPROVE] * len(attempts)},
    }
    # A file per transcript: a worker loads each `scripted:PATH` once and keeps it.
    path = directory / f"{package.name}-{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path
