"""Start-up cost of the network lockdown and guard, measured side by side in one run.

Run: .venv/bin/python bench/bench_lockdown.py [--runs 30]
Target (issue 6): lockdown + guard add about 10 ms or less to `krate audit head`;
`krate --version` (answered before either is loaded) stays at most 6x `python -c pass`.
The "without" variant calls the same entry point with `protect=False` (the form the
test suite uses in-process): there is no user-facing switch to turn the lockdown off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from _util import KRATE, median_seconds

ENTRY = "import sys; from krate.cli.main import main; sys.exit(main(['audit', 'head'], protect={}))"
PIECES = """
import time
t0 = time.perf_counter()
from krate.netguard import guard, lockdown
guard.install()
t1 = time.perf_counter()
state = lockdown.apply()
t2 = time.perf_counter()
assert state["applied"], state
print(f"{(t1 - t0) * 1000:.3f} {(t2 - t1) * 1000:.3f}")
"""


def pieces(runs: int) -> tuple[float, float]:
    guard_ms, lock_ms = [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PIECES], capture_output=True, text=True, check=True
        )
        g, lock = out.stdout.split()
        guard_ms.append(float(g))
        lock_ms.append(float(lock))
    return statistics.median(guard_ms), statistics.median(lock_ms)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    home = tempfile.mkdtemp(prefix="krate-bench-")
    env = {"KRATE_HOME": home}
    subprocess.run(
        [KRATE, "audit", "note", "bench"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    base = median_seconds([sys.executable, "-c", "pass"], runs, env)
    version = median_seconds([KRATE, "--version"], runs, env)
    # Interleave the two variants so machine noise hits both alike.
    with_, without = [], []
    for _ in range(3):
        with_.append(
            median_seconds([sys.executable, "-c", ENTRY.format(True)], runs // 3 or 1, env)
        )
        without.append(
            median_seconds([sys.executable, "-c", ENTRY.format(False)], runs // 3 or 1, env)
        )
    installed = median_seconds([KRATE, "audit", "head"], runs, env)
    guard_ms, lock_ms = pieces(runs)
    w, wo = statistics.median(with_), statistics.median(without)
    print(f"{'measure':<44} {'median ms':>10}")
    print(f"{'python -c pass':<44} {base * 1000:>10.1f}")
    ratio = f"({version / base:.1f}x python, target <= 6)"
    print(f"{'krate --version':<44} {version * 1000:>10.1f}   {ratio}")
    print(f"{'krate audit head (installed entry point)':<44} {installed * 1000:>10.1f}")
    print(f"{'audit head via main(protect=True)':<44} {w * 1000:>10.1f}")
    print(f"{'audit head via main(protect=False)':<44} {wo * 1000:>10.1f}")
    print(f"{'difference (lockdown + guard, end to end)':<44} {(w - wo) * 1000:>10.1f}")
    print(f"{'in-process: import + install guard':<44} {guard_ms:>10.2f}")
    print(f"{'in-process: lockdown.apply() incl. ctypes':<44} {lock_ms:>10.2f}")
    subprocess.run(["rm", "-rf", home], check=False)


if __name__ == "__main__":
    main()
