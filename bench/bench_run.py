"""Benchmark `krate run`: start-up overhead against bubblewrap alone, and pipe throughput.

    .venv/bin/python bench/bench_run.py [--runs 20] [--gib 1] [--repeat 5]

1. `krate run --no-network -- true` against bwrap run directly with the same
   isolation flags (the argv krate itself builds for that run), interleaved,
   medians side by side; target: krate adds at most 0.10 s. Also
   `krate run -- true` under the default policy, which starts the egress proxy
   and the in-sandbox bridge (issue 5), against the same bwrap baseline.
2. 1 GiB through `krate run --no-network -- cat` against plain `cat` (stdin from
   a pipe, stdout to /dev/null), interleaved, median of --repeat; target: at least
   0.9 of plain cat's throughput. Reported twice: by the wall clock, which adds
   krate's fixed start-up to the transfer, and timed around cat itself (inside
   the sandbox for krate), the rate of the stream, which never passes through krate.

krate's modules are byte-compiled first, as pip and Homebrew do at install: an
editable checkout under PYTHONDONTWRITEBYTECODE would otherwise be measured
compiling its own source on every start.

Uses a throwaway KRATE_HOME and workspace; prints a small table and exits 0.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KRATE = shutil.which("krate", path=str(Path(sys.executable).parent)) or "krate"


def timed(argvs: list[list[str]], env: dict, cwd: Path, runs: int) -> list[list[float]]:
    """Wall-clock seconds of each argv, `runs` times, interleaved (noise hits all alike)."""
    out: list[list[float]] = [[] for _ in argvs]
    for _ in range(runs):
        for argv, times in zip(argvs, out, strict=True):
            argv, fds = with_seccomp_fd(argv)
            start = time.perf_counter()
            subprocess.run(argv, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                           pass_fds=fds)  # fmt: skip
            times.append(time.perf_counter() - start)
            for fd in fds:
                os.close(fd)
    return out


def with_seccomp_fd(argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
    """bwrap's `--seccomp FD` pointed at a fresh pipe holding the filter, as krate makes it."""
    if "--seccomp" not in argv:
        return argv, ()
    from krate.sandbox import seccomp

    fd = seccomp.pipe_fd()
    at = argv.index("--seccomp") + 1
    return [*argv[:at], str(fd), *argv[at + 1 :]], (fd,)


def bwrap_argv(workspace: Path, env: dict) -> list[str]:
    """The exact bubblewrap command krate builds for `true` in this workspace (no status fd)."""
    code = (
        "import os, shutil, sys\n"
        "from pathlib import Path\n"
        "from krate.cli.policy_options import load_effective\n"
        "from krate.policy import Flags\n"
        "from krate.runs import RunRequest, prepare\n"
        "from krate.sandbox.backend import named\n"
        "from krate.sandbox import bwrap\n"
        "ws = Path(sys.argv[1])\n"
        "p = load_effective(Flags(no_network=True), ws)\n"
        "req = RunRequest(('true',), ws, ws, dict(os.environ), as_root=True)\n"
        "spec = prepare(p, req, named('bubblewrap', 'bwrap')).spec\n"
        "argv = bwrap.command(spec, shutil.which('bwrap'), fds=[], empty=lambda: 0,\n"
        "                     seccomp=lambda: 0)\n"
        "print('\\0'.join(argv))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(workspace)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    # The hidden-file placeholders read from fd 0 in this copy: timed() gives it /dev/null,
    # and a fresh pipe holding the seccomp filter for `--seccomp`.
    return out.stdout.rstrip("\n").split("\0")


# cat between two clock readings: how long the stream itself took, wherever cat runs.
TIMED_CAT = "s=$(date +%s%N); cat; e=$(date +%s%N); echo $((e - s)) >&2"


def throughput(prefix: list[str], env: dict, cwd: Path, gib: float) -> tuple[float, float]:
    """(wall seconds, cat's own seconds) to pipe `gib` GiB of zeros through cat to /dev/null."""
    size = int(gib * (1 << 30))
    feeder = subprocess.Popen(
        ["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE, cwd=cwd
    )
    start = time.perf_counter()
    done = subprocess.run([*prefix, "sh", "-c", TIMED_CAT], stdin=feeder.stdout,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd,
                          check=True)  # fmt: skip
    elapsed = time.perf_counter() - start
    feeder.stdout.close()
    feeder.wait()
    return elapsed, int(done.stderr.split()[-1]) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5, help="throughput samples (median)")
    args = parser.parse_args()
    import krate

    compileall.compile_dir(Path(krate.__file__).parent, quiet=1)
    base = Path(tempfile.mkdtemp(prefix="krate-bench-", dir="/var/tmp"))
    try:
        ws = base / "ws"
        ws.mkdir()
        env = dict(os.environ, KRATE_HOME=str(base / "home"))
        # As root in root's own folder, krate runs the workload as root only when told to.
        run = [KRATE, "run", *(["--as-root"] if os.geteuid() == 0 else [])]
        krate_nonet = [*run, "--no-network", "--"]
        subprocess.run([*krate_nonet, "true"], env=env, cwd=ws, check=True)  # warm up
        bw = bwrap_argv(ws, env)
        t_true, t_bwrap, t_krate, t_default = timed(
            [["true"], bw, [*krate_nonet, "true"], [*run, "--", "true"]],
            env, ws, args.runs,
        )  # fmt: skip
        m_b, m_k, m_d = (statistics.median(t) for t in (t_bwrap, t_krate, t_default))
        print(f"start-up, median of {args.runs} interleaved runs (s):")
        print(f"  true                                 {statistics.median(t_true):.4f}")
        print(f"  bwrap (krate's flags) -- true        {m_b:.4f}")
        print(f"  krate run --no-network -- true       {m_k:.4f}")
        print(f"  krate run -- true (default: proxy)   {m_d:.4f}")
        print(f"  overhead, --no-network               {m_k - m_b:.4f}   (target <= 0.10)")
        print(f"  overhead, default policy             {m_d - m_b:.4f}   (target <= 0.10)")

        plain, boxed = [], []
        for _ in range(args.repeat):
            plain.append(throughput([], env, ws, args.gib))
            boxed.append(throughput(krate_nonet, env, ws, args.gib))
        mib = args.gib * 1024
        p, b = (statistics.median(w for w, _ in runs) for runs in (plain, boxed))
        p_cat, b_cat = (statistics.median(c for _, c in runs) for runs in (plain, boxed))
        print(f"throughput, {args.gib:g} GiB from a pipe to /dev/null, median of {args.repeat}:")
        print(f"  cat                                  {mib / p:6.0f} MiB/s")
        print(f"  krate run --no-network -- cat        {mib / b:6.0f} MiB/s")
        print(f"  ratio, wall clock (with start-up)    {p / b:6.2f}   (target >= 0.9)")
        rates = f"{mib / p_cat:.0f} vs {mib / b_cat:.0f}"
        print(f"  the stream itself, timed around cat  {rates} MiB/s")
        print(f"  ratio, the stream itself             {p_cat / b_cat:6.2f}   (target >= 0.9)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
