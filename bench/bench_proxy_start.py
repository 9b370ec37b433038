"""Benchmark the egress proxy's start-up and what the first connection of a run waits for it.

    .venv/bin/python bench/bench_proxy_start.py [--runs 15]

1. The proxy alone, started exactly as krate starts it (`spawn_proxy`: `python -I -S`,
   its script's bytecode, the files of helperlib.MODULES): from the spawn to its
   ready line (it listens from then on).
2. A real `krate run` (default profile) whose workload, as its first instruction,
   asks the proxy for a host the policy denies (`CONNECT`, answered 403 without a
   name lookup) twice in a row: the first answer waits for whatever of the proxy's
   start-up is still left, the second does not. The difference is the wait
   (issue 19: the first connection must not wait for the proxy's start-up). The
   client is the sandbox's `python3 -I -S`, whose own start-up (about 10 ms) also
   overlaps the proxy's: a faster client waits that much longer.

Medians; uses a throwaway KRATE_HOME and workspace; exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import KRATE

# bash: about 2 ms to start, as quick as a client gets (curl, Go and Rust programs are close).
CLIENT = r"""
ask() {
  exec 3<>/dev/tcp/127.0.0.1/${HTTP_PROXY##*:}
  printf 'CONNECT denied.invalid:443 HTTP/1.1\r\n\r\n' >&3
  read -r _ status _ <&3
  exec 3<&-
  [ "$status" = 403 ] || exit 3
}
t0=$EPOCHREALTIME
up=0; for f in /tmp/krate-egress-*/proxy.sock; do [ -S "$f" ] && up=1; done
ask; t1=$EPOCHREALTIME; ask; t2=$EPOCHREALTIME
echo "$t0 $t1 $t2 $up"
"""


def proxy_ready(runs: int) -> list[float]:
    """Seconds from the proxy's spawn to its ready line, as krate starts it."""
    from krate.egress import helperlib
    from krate.egress.spawn import spawn_proxy

    out = []
    for _ in range(runs):
        folder = Path(tempfile.mkdtemp(prefix="krate-bench-proxy-"))
        journal = os.open(folder / "journal", os.O_WRONLY | os.O_CREAT, 0o600)
        config = {
            "rules": [{"kind": "exact", "host": "example.com", "ports": [443],
                       "is_ip": False, "rule": "bench", "layer": "bench"}],
            "net_default": ["default", "builtin:default"],
            "listen": f"unix:{folder / 'proxy.sock'}",
            "journal_fd": journal,
            "given": helperlib.given(),
        }  # fmt: skip
        start = time.perf_counter()
        process, stderr = spawn_proxy(os.path.realpath(sys.executable), config, folder)
        line = process.stdout.readline()
        out.append(time.perf_counter() - start)
        assert json.loads(line)["type"] == "ready", line
        process.stdin.close()
        process.wait()
        process.stdout.close()
        stderr.close()
        os.close(journal)
        shutil.rmtree(folder, ignore_errors=True)
    return out


def first_connection(runs: int) -> list[tuple[float, float, float]]:
    """(first, second) answer times of a workload asking the proxy right away, and 1.0 when
    the proxy was already listening as the workload started (its socket exists), else 0.0."""
    base = Path(tempfile.mkdtemp(prefix="krate-bench-", dir="/var/tmp"))
    try:
        ws = base / "ws"
        ws.mkdir()
        env = dict(os.environ, KRATE_HOME=str(base / "home"))
        run = [KRATE, "run", *(["--as-root"] if os.geteuid() == 0 else []), "--"]
        (ws / "client.sh").write_text(CLIENT)
        argv = [*run, "bash", "client.sh"]
        subprocess.run(argv, env=env, cwd=ws, check=True, capture_output=True)  # warm up
        out = []
        for _ in range(runs):
            done = subprocess.run(argv, env=env, cwd=ws, check=True, capture_output=True,
                                  stdin=subprocess.DEVNULL, text=True)  # fmt: skip
            t0, t1, t2, up = map(float, done.stdout.split())
            out.append((t1 - t0, t2 - t1, up))
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    ready = proxy_ready(args.runs)
    pairs = first_connection(args.runs)
    first = statistics.median(f for f, _, _ in pairs)
    second = statistics.median(s for _, s, _ in pairs)
    wait = statistics.median(f - s for f, s, _ in pairs)
    up = sum(u for _, _, u in pairs)
    print(f"egress proxy start-up, median of {args.runs} (ms):")
    print(f"  spawn -> ready line (as krate starts it)   {statistics.median(ready) * 1000:6.1f}")
    print(f"  first connection of a run, answered in     {first * 1000:6.1f}")
    print(f"  second connection, answered in             {second * 1000:6.1f}")
    print(f"  the first one's wait for the proxy         {wait * 1000:6.1f}")
    print(f"  runs whose proxy listened as the workload started: {up:.0f} of {len(pairs)}")
    for listening, label in ((1.0, "listening"), (0.0, "not yet listening")):
        waits = [f - s for f, s, u in pairs if u == listening]
        if waits:
            print(f"    wait when {label:<20} {statistics.median(waits) * 1000:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
