"""Start-up cost: `krate --version` and other light commands against `python3 -c pass`.

Run: .venv/bin/python bench/bench_startup.py
Target (issue 2): `krate --version` median at most 6x `python -c pass`, measured side by side.
"""

from __future__ import annotations

import os
import sys
import tempfile

from _util import KRATE, median_seconds


def main() -> None:
    home = tempfile.mkdtemp(prefix="krate-bench-")
    env = {"KRATE_HOME": home}
    base = median_seconds([sys.executable, "-c", "pass"], env=env)
    rows = [("python -c pass", base)]
    for argv in (["--version"], ["audit", "head"], ["info", "--json"], ["--help"]):
        rows.append(("krate " + " ".join(argv), median_seconds([KRATE, *argv], env=env)))
    completion = dict(env, _KRATE_COMPLETE="complete_bash", COMP_WORDS="krate au", COMP_CWORD="1")
    rows.append(("TAB completion (bash)", median_seconds([KRATE], env=completion)))
    print(f"{'command':<28} {'median ms':>10} {'x python':>9}")
    for name, seconds in rows:
        print(f"{name:<28} {seconds * 1000:>10.1f} {seconds / base:>9.1f}")
    ratio = rows[1][1] / base
    print(f"\nkrate --version / python -c pass = {ratio:.1f} (target <= 6)")
    os.system(f"rm -rf {home}")


if __name__ == "__main__":
    main()
