"""A run end to end on a real third-party package (cachetools, fetched from PyPI) against its own test suite."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from temporalio.client import Client

from darkfactory.settings import FactorySettings
from darkfactory.target_env import ensure_target_env
from tests.conftest import git, request_for, run_to_end
from tests.third_party import SOURCE_FILE, sdist_repo

TRANSCRIPT = Path(__file__).parent / "fixtures" / "third_party_transcript.json"
SPEC = """\
# typedkey ignores the types of positional arguments

Since the last change, `cachetools.keys.typedkey(1, 2, 3) == typedkey(1.0, 2.0, 3.0)`, so a function
decorated with `@cached(cache, key=typedkey)` returns the result it computed for `f(1)` when called as
`f(1.0)`. Typed keys must differ when the argument types differ, as documented; the package's own test
suite must pass again.
"""


async def test_scripted_agent_fixes_a_seeded_bug_in_cachetools_against_its_own_suite(
    client: Client, factory_home: Path, tmp_path: Path
) -> None:
    repo = sdist_repo(tmp_path / "cachetools")
    upstream_blob = git(repo, "rev-parse", f"main~1:{SOURCE_FILE}")
    # The seeded commit really is broken, by the package's own tests in the environment the gates use.
    env = ensure_target_env(repo, FactorySettings(home=factory_home).envs_dir)
    seeded = subprocess.run(
        [str(env.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line"],
        cwd=repo,
        env={"PYTHONPATH": str(repo / "src"), "PYTHONDONTWRITEBYTECODE": "1", "PATH": f"{env.bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert seeded.returncode == 1, seeded.stdout[-2000:]
    assert "(1, 2, 3) == (1.0, 2.0, 3.0)" in seeded.stdout
    assert git(repo, "status", "--porcelain") == ""

    request = request_for(repo, f"scripted:{TRANSCRIPT}").model_copy(update={"spec": SPEC})
    summary = await run_to_end(client, factory_home, request)

    assert summary.succeeded, summary.error
    assert [(t.id, t.state, t.attempts) for t in summary.tasks] == [("fix-typedkey", "merged", 1)]
    # Same blob id: main's file is the upstream file byte for byte.
    assert git(repo, "rev-parse", f"main:{SOURCE_FILE}") == upstream_blob
    fix = "fix-typedkey: typedkey: key on the types of the positional arguments"
    assert git(repo, "log", "--format=%s", "main").splitlines() == [fix, "seed bug", "upstream cachetools 5.5.2"]
    tests = next(g for g in summary.final_gates if g.gate == "tests")
    passed = re.search(r"(\d+) passed", tests.summary)
    assert tests.passed and passed, tests.summary
    assert int(passed.group(1)) >= 200 and "failed" not in tests.summary, tests.summary
