"""Start-up of every krate command, as ratios to `python -c pass` measured in the same run.

    .venv/bin/python bench/bench_startup.py [--runs 15] [--events 100000]

Goals (issue 19), checked on the medians of interleaved runs (noise hits all alike),
so that they hold on any machine:
- `krate run --no-network -- true`: at most 50 ms more than bare bubblewrap with the
  same isolation flags (the argv krate itself builds, bench_run.py's baseline);
- `krate run -- true` under the default profile (egress proxy and bridge): at most
  70 ms more than the same bubblewrap;
- every other command below, `--help` included: at most 5x `python -c pass`, with the
  store holding --events events (runs as krate records them, bench_store.py's seeding);
- one TAB press (`_KRATE_COMPLETE=complete_bash`): at most 3x `python -c pass`.

`python -c "import typer"` is printed without a goal: it is the floor of every command
that goes through Typer (the writers, the rarer readers, help on a terminal; not
run/build, the light read-only commands of cli/fastread.py, help on a pipe as timed
here, --version or TAB), ARCHITECTURE.md "Start-up budget".

Not timed: `audit list` without --limit prints the whole record, and `audit verify` and
`data export` walk it (bench_store.py times them at 1,000,000 events);
`doctor` starts test sandboxes, `login`/`push` talk to a registry.

krate's modules are byte-compiled first, as pip and Homebrew do at install. Prints one
row per command and exits 1 when a goal is missed.
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

from bench_run import KRATE, bwrap_argv, with_seccomp_fd
from bench_store import seed_runs

PYTHON_RATIO = 5.0
COMPLETE_RATIO = 3.0
RUN_NONET_MS = 50.0
RUN_DEFAULT_MS = 70.0
TYPER = "python -c 'import typer'"  # no goal: the floor of the commands Typer parses

# Every light command: (label, argv after `krate`).
COMMANDS = [
    ("--version", ["--version"]),
    ("--help", ["--help"]),
    ("run --help", ["run", "--help"]),
    ("info", ["info"]),
    ("info --json", ["info", "--json"]),
    ("runs list", ["runs", "list"]),
    ("runs show last", ["runs", "show", "last"]),
    ("builds list", ["builds", "list"]),
    ("artifacts list", ["artifacts", "list"]),
    ("policy list", ["policy", "list"]),
    ("policy show", ["policy", "show"]),
    ("policy explain", ["policy", "explain", "net", "registry.npmjs.org"]),
    ("audit head", ["audit", "head"]),
    ("audit list --limit 50", ["audit", "list", "--limit", "50"]),
    ("audit list --json --limit 50", ["audit", "list", "--json", "--limit", "50"]),
    ("audit network", ["audit", "network"]),
    ("data where", ["data", "where"]),
    ("image list", ["image", "list"]),
]
COMPLETIONS = [
    ("TAB: krate au", "krate au", "1"),
    ("TAB: krate audit v", "krate audit v", "2"),
    ("TAB: krate run --pol", "krate run --pol", "2"),
]


def timed(argvs: list[tuple[list[str], dict]], cwd: Path, runs: int) -> list[tuple[float, float]]:
    """(median wall-clock, median CPU) seconds of each (argv, env), `runs` times, interleaved.

    CPU time (user + system of the process and its children) shows what krate itself
    costs when other work on the machine inflates the wall clock.
    """
    walls: list[list[float]] = [[] for _ in argvs]
    cpus: list[list[float]] = [[] for _ in argvs]
    for _ in range(runs):
        for (argv, env), wall, cpu in zip(argvs, walls, cpus, strict=True):
            argv, fds = with_seccomp_fd(argv)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(argv, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, pass_fds=fds)  # fmt: skip
            wall.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            for fd in fds:
                os.close(fd)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--only", default="", help="time only the commands whose label has this")
    args = parser.parse_args()
    import krate
    from krate.paths import Paths

    compileall.compile_dir(Path(krate.__file__).parent, quiet=1)
    base = Path(tempfile.mkdtemp(prefix="krate-bench-", dir="/var/tmp"))
    try:
        ws = base / "ws"
        ws.mkdir()
        home = base / "home"
        env = dict(os.environ, KRATE_HOME=str(home))
        env.pop("_KRATE_COMPLETE", None)
        run = [KRATE, "run", *(["--as-root"] if os.geteuid() == 0 else [])]
        subprocess.run([*run, "--no-network", "--", "true"], env=env, cwd=ws, check=True)
        seed_runs(Paths(home, home), args.events // 2)  # two events per run
        python = ([sys.executable, "-c", "pass"], env)
        cases = [("python -c pass", python), ("bwrap (krate's flags) -- true",
                                              (bwrap_argv(ws, env), env))]  # fmt: skip
        cases.append((TYPER, ([sys.executable, "-c", "import typer"], env)))
        cases.append(("run --no-network -- true", ([*run, "--no-network", "--", "true"], env)))
        cases.append(("run -- true (default)", ([*run, "--", "true"], env)))
        cases += [(label, ([KRATE, *argv], env)) for label, argv in COMMANDS]
        for label, words, cword in COMPLETIONS:
            tab = dict(env, _KRATE_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=cword)
            cases.append((label, ([KRATE], tab)))
        fixed = ("python -c pass", "bwrap (krate's flags) -- true", TYPER)
        cases = [c for c in cases if c[0] in fixed or args.only in c[0]]
        medians = dict(zip((c[0] for c in cases), timed([c[1] for c in cases], ws, args.runs),
                           strict=True))  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    (py, py_cpu), (bw, _) = medians["python -c pass"], medians["bwrap (krate's flags) -- true"]
    missed = []
    print(f"median of {args.runs} interleaved runs, store of {args.events:,} events")
    print(f"{'command':<30} {'ms':>7} {'x python':>9} {'goal':>16} {'cpu x python':>13}")
    for label, (seconds, cpu) in medians.items():
        goal, ok = "", True
        if label.startswith("run ") and "--help" not in label:
            limit = RUN_NONET_MS if "--no-network" in label else RUN_DEFAULT_MS
            over = (seconds - bw) * 1000
            goal, ok = f"+{over:.0f} <= +{limit:.0f} ms", over <= limit
        elif label.startswith("TAB"):
            goal, ok = f"<= {COMPLETE_RATIO:g}x", seconds / py <= COMPLETE_RATIO
        elif label not in ("python -c pass", "bwrap (krate's flags) -- true", TYPER):
            goal, ok = f"<= {PYTHON_RATIO:g}x", seconds / py <= PYTHON_RATIO
        mark = "" if ok else "  MISSED"
        row = f"{label:<30} {seconds * 1000:>7.1f} {seconds / py:>9.1f} {goal:>16}"
        print(f"{row} {cpu / py_cpu:>13.1f}{mark}")
        if not ok:
            missed.append(label)
    if missed:
        print(f"\n{len(missed)} goal(s) missed: {', '.join(missed)}")
        return 1
    print("\nevery goal met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
