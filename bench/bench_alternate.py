"""Two krate source trees alternated on one command: median wall clock and CPU time.

    .venv/bin/python bench/bench_alternate.py OLD_SRC NEW_SRC [--runs 40] -- run -- true

Each tree runs through an entry script that differs only in `sys.path` (the tree first),
on this interpreter, in the same fresh workspace and KRATE_HOME, the order swapped every
round so that neither side always runs second. CPU is user + system of the command and
its children (the sandbox, the proxy, the bridge). `--as-root` is added after `run` or
`build` when running as root. Both trees are byte-compiled first, as an install does.
`--fill DIR` copies DIR into the workspace first, for what grows with the workspace (the
krate.toml watch after the run walks it). How docs/startup.md's rounds compare an old
commit with the new code:
`git archive OLD src | tar -x -C /tmp/old`, then this with /tmp/old/src and ./src.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENTRY = """\
import sys
sys.path.insert(0, {src!r})
from krate.cli.main import run
sys.exit(run())
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument(
        "--fill", metavar="DIR", help="copy DIR into the workspace first (e.g. a node_modules)"
    )
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]  # krate's arguments, after the first `--`
    if os.geteuid() == 0 and command[:1] in (["run"], ["build"]):
        command = [command[0], "--as-root", *command[1:]]
    base = Path(tempfile.mkdtemp(prefix="krate-alternate-", dir="/var/tmp"))
    try:
        ws = base / "ws"
        ws.mkdir()
        if args.fill:
            shutil.copytree(args.fill, ws / Path(args.fill).name, symlinks=True)
        env = dict(os.environ, KRATE_HOME=str(base / "home"))
        sides = {}
        for name, src in (("old", args.old), ("new", args.new)):
            compileall.compile_dir(Path(src, "krate"), quiet=1)
            entry = base / f"entry-{name}.py"
            entry.write_text(ENTRY.format(src=str(Path(src).resolve())))
            sides[name] = [sys.executable, str(entry), *command]
        for argv in sides.values():  # the store, and warm caches
            subprocess.run(argv, env=env, cwd=ws, check=True, stdin=subprocess.DEVNULL)
        wall: dict[str, list[float]] = {"old": [], "new": []}
        cpu: dict[str, list[float]] = {"old": [], "new": []}
        for i in range(args.runs):
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                subprocess.run(sides[name], env=env, cwd=ws, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, check=True)  # fmt: skip
                wall[name].append((time.perf_counter() - start) * 1000)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                cpu[name].append(used * 1000)
        print(f"krate {' '.join(command)}: median of {args.runs}, load {os.getloadavg()[0]:.2f}")
        for name in ("old", "new"):
            print(
                f"{name}: wall {statistics.median(wall[name]):.1f} ms, "
                f"CPU {statistics.median(cpu[name]):.1f} ms"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
