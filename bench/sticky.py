"""The sticky-queue timeout's two sides, for one setting: wall time lost per worker SIGKILL (figure 4's crash
run) and the sticky timeouts a busy run suffers (figure 2's parallel run: each one replays a history).

    DARKFACTORY_STICKY_TIMEOUT_S=1 .venv/bin/python bench/sticky.py     # ~5 minutes on 2 cores

The workers the bench starts take the setting from this environment (bench/harness.py).
"""

from __future__ import annotations

import asyncio
import os

import crash
import parallel
from harness import Bench, progress


async def main() -> None:
    setting = os.environ.get("DARKFACTORY_STICKY_TIMEOUT_S", "the default")
    async with Bench() as bench:
        busy = await parallel.measure(bench, 64, 16, 2.0)
        killed = await crash.measure(bench, 6, 5, 7, 0.5)
    progress(f"sticky timeout {setting}")
    print(f"parallel run (64 tasks, 16 at once): {busy.measured_s:.1f} s, {busy.sticky_timeouts} sticky timeout(s)")
    print(
        f"crash run: {killed.lost_per_kill_s:.1f} s lost per kill, {killed.repeated / killed.kills:.2f} repeated "
        f"model calls per kill, {killed.workflow_task_timeouts} workflow task timeout(s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
