"""The store at scale: 1,000,000 events, list/verify times, and the single-process append rate.

Run: .venv/bin/python bench/bench_store.py [--events 1000000] [--runs 100000]
Targets (issue 2): `audit list --limit 50 --json` < 0.3 s, `audit list --run ID` < 0.3 s,
`audit verify` < 10 s with 1,000,000 events; >= 2,000 appends/s with one event per transaction
(each transaction also advances the head copy, krate.head). `--runs` adds runs with their index
rows, which verify checks against the chain.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _util import KRATE, median_seconds

from krate.paths import Paths
from krate.store import events, open_store


def seed(paths: Paths, n: int) -> str:
    """Write n chained events quickly (one big transaction) through the real hash function."""
    start = datetime.now(UTC) - timedelta(days=30)
    with open_store(paths) as store, store.write() as writer:
        for i in range(n):
            run_id = f"run{i // 10:07d}"
            writer.store.clock = lambda i=i: start + timedelta(milliseconds=2 * i)
            writer.append("bench.event", {"i": i, "host": "registry.npmjs.org"}, run_id)
    return f"run{(n // 2) // 10:07d}"


def seed_runs(paths: Paths, n: int) -> None:
    """n runs as krate records them: run.started and run.finished events with their runs rows,
    so `audit verify` has index rows to check against the chain."""
    from krate.store import runs

    start = datetime.now(UTC) - timedelta(days=10)
    facts = {"cwd": "/w", "workspace": "/w", "backend": "bubblewrap", "krate_pid": 1}
    with open_store(paths) as store, store.write() as writer:
        for i in range(n):
            run_id = f"bench{i:09d}"
            writer.store.clock = lambda i=i: start + timedelta(milliseconds=5 * i)
            argv = ["npm", "install", f"pkg{i}"]
            data = {"argv": argv, **facts, "policy": {"name": "default", "hash": "h"}}
            event = writer.append("run.started", data, run_id)
            row = {"argv": argv, **facts, "policy_name": "default", "policy_hash": "h"}
            runs.insert_started(writer, run_id, event, row)
            done = {"status": "finished", "exit_code": 0, "duration_s": 1.5}
            event = writer.append("run.finished", done, run_id)
            runs.update_finished(
                writer, run_id, event, status="finished", exit_code=0, reason=None, duration_s=1.5
            )


def append_rate(paths: Paths, n: int = 5000) -> float:
    with open_store(paths) as store:
        begin = time.perf_counter()
        for i in range(n):
            events.append(store, "bench.append", {"i": i})
        return n / (time.perf_counter() - begin)


def timed(argv: list[str], env: dict) -> float:
    begin = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--runs", type=int, default=0, help="also record this many runs (index rows for verify)"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="krate-bench-"))
    paths = Paths(home, home)
    env = dict(os.environ, KRATE_HOME=str(home))
    try:
        t = time.perf_counter()
        some_run = seed(paths, args.events)
        print(f"seeded {args.events:,} events in {time.perf_counter() - t:.1f} s")
        if args.runs:
            t = time.perf_counter()
            seed_runs(paths, args.runs)
            print(f"seeded {args.runs:,} runs in {time.perf_counter() - t:.1f} s")
        size = (home / "krate.db").stat().st_size
        print(f"database size: {size / 1e6:.0f} MB")
        envd = {"KRATE_HOME": str(home)}
        results = {
            "audit list --limit 50 --json": median_seconds(
                [KRATE, "audit", "list", "--limit", "50", "--json"], runs=7, env=envd
            ),
            f"audit list --run {some_run}": median_seconds(
                [KRATE, "audit", "list", "--run", some_run, "--json"], runs=7, env=envd
            ),
            "audit list --kind user. (no match)": median_seconds(
                [KRATE, "audit", "list", "--kind", "user.", "--json"], runs=7, env=envd
            ),
            "audit verify": timed([KRATE, "audit", "verify"], env),
        }
        for name, seconds in results.items():
            print(f"{name:<40} {seconds:8.3f} s")
        rate = append_rate(paths)
        print(f"{'append rate (1 event per transaction)':<40} {rate:8.0f} events/s")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
