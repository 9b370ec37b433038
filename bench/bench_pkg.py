"""Benchmark `krate run -- pip install` and `krate run -- npm install` against the bare tools.

    .venv/bin/python bench/bench_pkg.py [--runs 5] [--check]

Mirrors on loopback, no internet (tests/pkgmirror_support.py): a PEP 503 simple index
with 10 pure-Python wheels, and an npm registry of 20 packages (packuments and tarballs
made by `npm pack`), each a `ThreadingHTTPServer` in this process, with a listen backlog
of 128 (with the default 5, bare npm's burst of connections lost SYNs and waited a
second for their resend, which made the bare arm of the npm rows 0.7 s slower at random).
Four comparisons, interleaved, medians, ratio krate / bare:

1. pip install of the 10 wheels, cold: no cache on either side (the user's ~/.cache/pip
   and krate's cache of the project emptied before every run of either arm; both
   folders exist, so krate mounts its cache at the usual path).
2. npm install of a 20-dependency project, cold likewise (~/.npm; node_modules and
   package-lock.json removed before every run of either arm).
3. and 4. the same with warm caches: the user's for bare, krate's own for krate (both
   filled by the runs before).

Goals (issue 18): cold at most 1.15x bare; warm krate cache no slower than bare with a
warm user cache, read here as within the same 1.15x, since krate's fixed start-up
(`bench_run.py`) is paid in both. `--check` exits 1 when a goal is missed; without it the
table is printed and the exit status is 0.

Where the difference goes, for each row: `conns`, the connections the last krate run of
the row made through the egress proxy (from its record: a warm npm install makes none,
its cache answers everything; a warm pip install revalidates each index page), and
`net`, the ratio with krate's fixed cost taken out. That cost is a fifth comparison,
interleaved with the others: `true` with the same flags, krate against bare (start-up,
proxy, sandbox, records), whose difference is subtracted from the row's krate median.
The goal is judged on the plain ratio, never on `net`.

pip is run with `--isolated` and `PIP_CONFIG_FILE=/dev/null` in both arms: this machine's
global pip configuration points at file:// indexes.

The mirrors are reached by name, as a corporate mirror is: `pypi.corp.example` and
`npm.corp.example` resolve to 127.0.0.1, and the krate arm allows them with
`--allow-host NAME:PORT --allow-private-host NAME` (the opt-in such a mirror needs).
The names are mapped as tests/test_pkg_first_try.py maps them: both arms start under
`bwrap --dev-bind / / --ro-bind HOSTS /etc/hosts`, which costs both the same few
milliseconds and changes nothing else. Without bubblewrap (macOS) both arms use
127.0.0.1 and the krate arm `--allow-host 127.0.0.1:PORT`.
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
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.pkgmirror_support import (  # noqa: E402  (the repository root, added above)
    Server,
    free_port,
    make_npm_registry,
    make_simple_index,
)

KRATE = shutil.which("krate", path=str(Path(sys.executable).parent)) or "krate"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
GOAL = 1.15


def _clear(*paths: Path) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _empty(folder: Path) -> None:
    """Empty a cache folder but keep it: krate mounts its own cache over the usual one."""
    for entry in folder.iterdir() if folder.is_dir() else ():
        _clear(entry)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench_pkg: {' '.join(argv[:6])} ... failed:\n{done.stderr.decode()[-2000:]}")
    return elapsed


class Setup:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "home"
        self.ws = self.home / "project"
        self.krate_home = base / "krate-home"
        self.ws.mkdir(parents=True)
        for cache in (".npm", ".cache/pip"):  # as on a machine that has used npm and pip
            (self.home / cache).mkdir(parents=True)
        wheels = [f"krate-bench-py{i:02d}" for i in range(10)]
        npms = [f"krate-bench-js{i:02d}" for i in range(20)]
        self.wrap: list[str] = []
        self.names = {"py": "127.0.0.1", "npm": "127.0.0.1"}
        bwrap = shutil.which("bwrap")
        if bwrap:  # the mirrors by name (see the docstring)
            hosts = base / "hosts"
            hosts.write_text(
                "127.0.0.1 localhost\n::1 localhost\n"
                "127.0.0.1 pypi.corp.example\n127.0.0.1 npm.corp.example\n"
            )
            hosts.chmod(0o644)
            self.wrap = [bwrap, "--dev-bind", "/", "/", "--ro-bind", str(hosts), "/etc/hosts"]
            self.names = {"py": "pypi.corp.example", "npm": "npm.corp.example"}
        make_simple_index(base / "py", wheels)
        port = free_port()
        make_npm_registry(base / "npm", npms, f"http://{self.names['npm']}:{port}")
        self.py = Server(base / "py")
        self.npm = Server(base / "npm", npm=True, port=port)
        py_url = f"http://{self.names['py']}:{self.py.port}"
        npm_url = f"http://{self.names['npm']}:{self.npm.port}"
        deps = ", ".join(f'"{n}": "1.0.0"' for n in npms)
        (self.ws / "package.json").write_text(
            f'{{"name": "bench", "version": "1.0.0", "private": true, "dependencies": {{{deps}}}}}'
        )
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KRATE_HOME": str(self.krate_home),
            "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_ROOT_USER_ACTION": "ignore",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        self.pip = [
            PYTHON, "-m", "pip", "install", "--isolated", "--quiet", "--no-input",
            "--trusted-host", self.names["py"], "--index-url", f"{py_url}/simple/",
            "--target", "pylib", *wheels,
        ]  # fmt: skip
        self.npm_argv = [
            "npm", "install", "--registry", f"{npm_url}/", "--no-audit", "--no-fund",
            "--no-update-notifier", "--loglevel", "error",
        ]  # fmt: skip

    def bare(self, argv: list[str]) -> list[str]:
        return [*self.wrap, *argv]

    def krate(self, argv: list[str], port: int, name: str) -> list[str]:
        root = ["--as-root"] if os.geteuid() == 0 else []
        allow = ["--allow-host", f"{name}:{port}"]
        if name != "127.0.0.1":
            allow += ["--allow-private-host", name]
        return [*self.wrap, KRATE, "run", *root, *allow, "--", *argv]

    def krate_cache(self, tool: str) -> list[Path]:
        return list((self.krate_home / "caches").glob(f"*/{tool}"))

    def close(self) -> None:
        self.py.close()
        self.npm.close()

    def connections(self) -> int:
        """Connections the last krate run made through the egress proxy (its record)."""
        argv = [KRATE, "runs", "show", "last", "--json"]
        done = subprocess.run(argv, env=self.env, cwd=self.ws, capture_output=True, check=True)
        return sum(1 for d in json.loads(done.stdout)["decisions"] if d["area"] == "network")


class Row(NamedTuple):
    name: str
    bare: float  # median seconds
    krate: float
    conns: int  # connections through the proxy (the last krate run's record)


def compare(setup: Setup, runs: int) -> list[Row]:
    """The four comparisons, then the fixed cost (`true`)."""
    ws, home = setup.ws, setup.home
    outputs = (ws / "pylib", ws / "node_modules", ws / "package-lock.json")
    arms = {
        "pip": (setup.pip, setup.py.port, home / ".cache" / "pip", "pip", setup.names["py"]),
        "npm": (setup.npm_argv, setup.npm.port, home / ".npm", "npm", setup.names["npm"]),
        "true": (["true"], setup.py.port, None, None, setup.names["py"]),
    }
    times: dict[tuple[str, str, str], list[float]] = {}
    conns: dict[tuple[str, str], int] = {}
    for warm in (False, True):
        for _ in range(runs + 1):  # the first round warms (or is dropped from) the medians
            for name, (argv, port, user_cache, tool, host) in arms.items():
                if name == "true" and not warm:
                    continue  # measured once, with the warm rounds
                state = "warm" if warm else "cold"
                for arm in ("bare", "krate"):
                    _clear(*outputs)
                    if not warm:
                        for cache in (user_cache, *setup.krate_cache(tool)):
                            _empty(cache)
                    full = setup.bare(argv) if arm == "bare" else setup.krate(argv, port, host)
                    times.setdefault((name, state, arm), []).append(_run(full, setup.env, ws))
                conns[(name, state)] = setup.connections()  # the round's krate run
    out = []
    for name in arms:
        for state in ("cold", "warm") if name != "true" else ("warm",):
            bare = statistics.median(times[(name, state, "bare")][1:])
            krate = statistics.median(times[(name, state, "krate")][1:])
            label = f"{name} install, {state} cache" if name != "true" else "true (fixed cost)"
            out.append(Row(label, bare, krate, conns[(name, state)]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured rounds per comparison")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    for tool in ("npm", PYTHON):
        if shutil.which(tool) is None:
            print(f"bench_pkg: {tool} not found; skipped")
            return 0
    # Under /var/tmp: the sandbox's /tmp is private, so a workspace there would be hidden.
    base = Path(tempfile.mkdtemp(prefix="krate-bench-pkg-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    setup = Setup(base)
    try:
        results = compare(setup, args.runs)
    finally:
        setup.close()
        shutil.rmtree(base, ignore_errors=True)
    missed = []
    *rows, fixed = results
    extra = fixed.krate - fixed.bare  # krate's fixed cost, paid by every row
    head = f"{'comparison':<28} {'bare s':>8} {'krate s':>8} {'ratio':>6} {'net':>5} {'conns':>5}"
    print(f"{head}  goal")
    for row in rows:
        ratio, net = row.krate / row.bare, (row.krate - extra) / row.bare
        ok = ratio <= GOAL
        if not ok:
            missed.append(row.name)
        verdict = "ok" if ok else "MISSED"
        print(
            f"{row.name:<28} {row.bare:8.3f} {row.krate:8.3f} {ratio:6.2f} {net:5.2f} "
            f"{row.conns:5d}  <= {GOAL} {verdict}"
        )
    print(
        f"{fixed.name:<28} {fixed.bare:8.3f} {fixed.krate:8.3f} {'':>6} {'':>5} {fixed.conns:5d}"
        f"  (krate +{extra * 1000:.0f} ms on every row)"
    )
    if missed and args.check:
        print(f"bench_pkg: goal missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
