"""Benchmark `krate run`: start-up overhead against bubblewrap alone, and pipe throughput.

    .venv/bin/python bench/bench_run.py [--runs 20] [--gib 1]

1. `krate run --no-network -- true` against bwrap run directly with the same
   isolation flags (the argv krate itself builds for that run), medians side by
   side; target: krate adds at most 0.10 s. Also `krate run -- true` under the
   default policy, which starts the egress proxy (issue 5) for the allowed registries.
2. 1 GiB through `krate run --no-network -- cat` against plain `cat` (stdin from
   a pipe, stdout to /dev/null); target: at least 0.9 of plain cat's throughput.

Uses a throwaway KRATE_HOME and workspace; prints a small table and exits 0.
"""

from __future__ import annotations

import argparse
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


def timed(argv: list[str], env: dict, cwd: Path, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL)
        out.append(time.perf_counter() - start)
    return out


def bwrap_argv(workspace: Path, env: dict) -> list[str]:
    """The exact bubblewrap command krate builds for `true` in this workspace (no status fd)."""
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from krate.cli.policy_options import load_effective\n"
        "from krate.policy import Flags\n"
        "from krate.runs import RunRequest, prepare\n"
        "from krate.sandbox import bwrap\n"
        "ws = Path(sys.argv[1])\n"
        "p = load_effective(Flags(no_network=True), ws)\n"
        "req = RunRequest(('true',), ws, ws, dict(os.environ))\n"
        "spec = prepare(p, req, 'bubblewrap').spec\n"
        "print('\\0'.join(bwrap.command(spec, shutil.which('bwrap'), fds=[], empty=lambda: 0)))\n"
    )
    code = "import shutil\n" + code
    out = subprocess.run([sys.executable, "-c", code, str(workspace)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    argv = out.stdout.rstrip("\n").split("\0")
    # the hidden-file placeholders read from fd 0 in this copy: give them /dev/null
    return [a if a != "0" else "0" for a in argv]


def throughput(argv: list[str], env: dict, cwd: Path, gib: float) -> float:
    """MiB/s for `gib` GiB of zeros piped through argv into /dev/null."""
    size = int(gib * (1 << 30))
    feeder = subprocess.Popen(
        ["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE, cwd=cwd
    )
    start = time.perf_counter()
    subprocess.run(argv, stdin=feeder.stdout, stdout=subprocess.DEVNULL, env=env, cwd=cwd,
                   check=True)  # fmt: skip
    feeder.stdout.close()
    feeder.wait()
    return size / (1 << 20) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="krate-bench-", dir="/var/tmp"))
    try:
        ws = base / "ws"
        ws.mkdir()
        env = dict(os.environ, KRATE_HOME=str(base / "home"))
        krate = [KRATE, "run", "--no-network", "--"]
        subprocess.run([*krate, "true"], env=env, cwd=ws, check=True)  # warm up
        # hidden files read their empty content from fd 0 here, which is /dev/null
        bw = bwrap_argv(ws, env)
        t_true = timed(["true"], env, ws, args.runs)
        t_bwrap = timed(bw, env, ws, args.runs)
        t_krate = timed([*krate, "true"], env, ws, args.runs)
        t_default = timed([KRATE, "run", "--", "true"], env, ws, args.runs)
        m_b, m_k = statistics.median(t_bwrap), statistics.median(t_krate)
        print(f"start-up, median of {args.runs} (s):")
        print(f"  true                                 {statistics.median(t_true):.4f}")
        print(f"  bwrap (krate's flags) -- true        {m_b:.4f}")
        print(f"  krate run --no-network -- true       {m_k:.4f}")
        print(f"  krate overhead                       {m_k - m_b:.4f}   (target <= 0.10)")
        print(f"  krate run -- true (default: proxy)   {statistics.median(t_default):.4f}")
        plain = throughput(["cat"], env, ws, args.gib)
        boxed = throughput([*krate, "cat"], env, ws, args.gib)
        print(f"throughput, {args.gib:g} GiB from a pipe to /dev/null (MiB/s):")
        print(f"  cat                                  {plain:.0f}")
        print(f"  krate run --no-network -- cat        {boxed:.0f}")
        print(f"  ratio                                {boxed / plain:.2f}   (target >= 0.9)")
        # the same transfer with krate's fixed start-up cost (measured above) taken out
        size_mib = args.gib * 1024
        steady = size_mib / max(size_mib / boxed - m_k, 1e-9)
        print(f"  krate, start-up excluded             {steady:.0f}   ratio {steady / plain:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
