"""How fast `factory serve` answers: a labelled issue that starts a run, its redelivery, and /healthz.

GitHub gives a webhook ten seconds and the issue asks for an answer within a second; the hook only starts
a workflow, so it should cost little more than one Temporal start. `factory serve` runs as a subprocess
against a dev server (SQLite with WAL), with no worker: the runs only need to exist. Each of N issues is
delivered once (a run starts) and then redelivered (`duplicate`, nothing starts); `/healthz` in the same
run is the floor. The figures are medians and 95th percentiles, and their ratio to the floor.

    .venv/bin/python bench/webhooks.py [--issues 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Bench, progress
from darkfactory.triggers.signatures import hmac_sha256_hex

SECRET = "bench-webhook-secret"
DEMO_SPEC = Path(__file__).resolve().parents[1] / "examples" / "demo" / "spec.md"


def delivery(full_name: str, number: int) -> tuple[bytes, dict[str, str]]:
    payload = {
        "action": "labeled",
        "label": {"name": "factory"},
        "issue": {"number": number, "title": f"Bench issue {number}", "body": DEMO_SPEC.read_text()},
        "repository": {"full_name": full_name},
        "sender": {"login": "bench"},
    }
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": uuid.uuid4().hex,
        "X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(SECRET, body),
        "Content-Type": "application/json",
    }
    return body, headers


async def timed_post(http: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    response = await http.post(path, content=body, headers=headers)
    return time.perf_counter() - began, response.json()["result"]


def figures(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.95) - 1)]


async def measure(issues: int) -> str:
    async with Bench() as bench:
        repo = bench.repo("widgets")
        config = bench.root / "serve.toml"
        config.write_text(f'[server]\ntask_queue = "unserved"\n[repos."bench/widgets"]\npath = "{repo}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DARKFACTORY_"))}
        env |= {
            "TEMPORAL_ADDRESS": bench.address,
            "DARKFACTORY_HOME": str(bench.home),
            "DARKFACTORY_GITHUB_WEBHOOK_SECRET": SECRET,
        }
        command = [str(Path(sys.executable).parent / "factory"), "serve", "--config", str(config), "--port", "0"]
        process = subprocess.Popen([*command, "--no-worker"], env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            first_line = await asyncio.to_thread(process.stdout.readline)
            if not first_line.startswith("listening on "):
                raise SystemExit(f"factory serve did not start (exit {process.wait(timeout=30)})")
            url = first_line.removeprefix("listening on ").strip()
            progress(f"factory serve on {url}; {issues} issues, each delivered twice")
            # A connection per request, as GitHub delivers (a kept-alive httpx connection adds ~40 ms of delayed ACK).
            async with httpx.AsyncClient(base_url=url, timeout=30, headers={"Connection": "close"}) as http:
                await http.get("/healthz")  # the first request pays for lazy imports; not measured
                health, started, duplicates = [], [], []
                for number in range(1, issues + 1):
                    began = time.perf_counter()
                    await http.get("/healthz")
                    health.append(time.perf_counter() - began)
                    body, headers = delivery("bench/widgets", number)
                    first, result = await timed_post(http, "/hooks/github", body, headers)
                    again, repeat = await timed_post(http, "/hooks/github", body, headers)
                    if (result, repeat) != ("started", "duplicate"):
                        raise SystemExit(f"issue {number}: {result} then {repeat}, expected started then duplicate")
                    started.append(first)
                    duplicates.append(again)
        finally:
            process.terminate()
            process.wait(timeout=30)
        runs = [e async for e in bench.client.list_workflows("FactoryTrigger = 'issue'")]
        if len(runs) != issues:
            raise SystemExit(f"{len(runs)} runs for {issues} issues")
    floor = figures(health)[0]
    rows = [("GET /healthz (floor)", health), ("labelled issue: run started", started), ("redelivery", duplicates)]
    lines = [
        f"| request ({issues} each) | median | p95 | max | median / floor |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, seconds in rows:
        median, p95 = figures(seconds)
        lines.append(
            f"| {name} | {median * 1000:.1f} ms | {p95 * 1000:.1f} ms | {max(seconds) * 1000:.1f} ms "
            f"| {median / floor:.1f}x |"
        )
    lines.append(f"\n{issues} runs started for {issues} issues; {issues} redeliveries started none.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=50)
    print(asyncio.run(measure(parser.parse_args().issues)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
