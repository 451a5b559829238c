"""Per-test coverage as JSON: which files of the tree each test executed (setup, call and teardown).

    python coverage_map.py DATA_FILE TREE OUT_JSON

Reads coverage.py's data file written with pytest-cov's `--cov-context=test` (contexts `nodeid|phase`) and
writes `{"files": [relative paths], "tests": {nodeid: [indices into files]}}`. File level, not line level:
a module's `def` lines and constants run at import time, outside any test's context, so line sets would
miss tests that depend on them.
"""

from __future__ import annotations

import json
import os
import sys

from coverage import CoverageData


def coverage_map(data_file: str, tree: str) -> dict[str, object]:
    data = CoverageData(basename=data_file)
    data.read()
    root = os.path.realpath(tree)
    files: list[str] = []
    tests: dict[str, list[int]] = {}
    for measured in sorted(data.measured_files()):
        real = os.path.realpath(measured)
        if not real.startswith(root + os.sep):
            continue
        contexts: set[str] = set()
        for names in data.contexts_by_lineno(measured).values():
            contexts.update(names)
        index = len(files)
        files.append(os.path.relpath(real, root))
        for context in sorted(contexts):
            nodeid = context.rsplit("|", 1)[0]
            if nodeid:
                entries = tests.setdefault(nodeid, [])
                if not entries or entries[-1] != index:
                    entries.append(index)
    return {"files": files, "tests": tests}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    data_file, tree, out = argv
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(coverage_map(data_file, tree), handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
