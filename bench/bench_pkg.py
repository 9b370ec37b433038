"""Benchmark `krate run -- pip install` and `krate run -- npm install` against the bare tools.

    .venv/bin/python bench/bench_pkg.py [--runs 5] [--check] [--set real|synthetic]

Two package sets. `--set real` (the default) is the install issue 18's bar describes, a
user's `pip install -r requirements.txt` or `npm install` of real packages: pip installs 10
pinned wheels from PyPI (requests and its four dependencies certifi,
charset-normalizer, idna, urllib3; python-dateutil with six and tzdata; packaging; attrs;
PIP_REAL below), resolving every dependency from the mirror, with bytecode compiled as a
user gets it; npm installs a project of 20 pinned popular packages without dependencies of
their own (lodash, semver, uuid, dayjs, chalk ...; NPM_REAL). They are downloaded once
from pypi.org (by PYTHON's own pip, which picks the wheel that interpreter installs, e.g.
charset-normalizer's manylinux one) and registry.npmjs.org into
`platformdirs.user_cache_path("krate-bench")/pkg` (~/.cache/krate-bench/pkg on Linux),
checked against the sha256 PyPI publishes and npm's `dist.integrity` (sha512), and reused
after only while they still match. Offline with an empty cache the bench says what it
could not fetch and exits 2. `--set synthetic` needs no registry: 10 empty wheels and 20
empty npm packages made on the spot, so the install itself takes almost nothing and the
ratio is mostly krate's fixed start-up: the worst case.

Mirrors on loopback, no internet while measuring (tests/pkgmirror_support.py): a PEP 503
simple index of the wheels and an npm registry of the tarballs (packuments made from each
tarball's package.json, `dist.tarball` pointing at the mirror), each a `ThreadingHTTPServer`
in this process, with a listen backlog of 128 (with the default 5, bare npm's burst of
connections lost SYNs and waited a second for their resend, which made the bare arm of the
npm rows 0.7 s slower at random).
Four comparisons, interleaved, medians, ratio krate / bare:

1. `.venv/bin/python -m pip install -r requirements.txt` of the 10 packages into the
   project's own virtual environment (copied fresh from one made once, before every run of
   either arm), cold: no cache on either side (the user's ~/.cache/pip and krate's cache of
   the project emptied before every run of either arm; both folders exist, so krate mounts
   its cache at the usual path).
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
global pip configuration points at file:// indexes. Every measured run starts after
`sync`, so that no arm pays for writing out the files of the one before.

Not `pip install --target DIR`, which an earlier version of this bench used: pip builds
such an install in a temporary folder and then moves it into DIR, and in any sandbox the
workspace is a mount of its own, so the move cannot be a rename and becomes a copy of
every file (about 0.3 s more for the real set here; bare pip with TMPDIR on another file
system pays the same). docs/packages.md says so, and how to avoid it.

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
import base64
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.pkgmirror_support import (  # noqa: E402  (the repository root, added above)
    Server,
    free_port,
    index_from_wheels,
    make_npm_registry,
    make_simple_index,
    registry_from_tarballs,
)

KRATE = shutil.which("krate", path=str(Path(sys.executable).parent)) or "krate"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
GOAL = 1.15

# The real set: every dependency of every pin is pinned here too (python-dateutil 4 needs
# six and tzdata; requests its four), so each tool resolves entirely from the mirror.
PIP_REAL = (
    "requests==2.34.2", "certifi==2026.10.19.post1", "charset-normalizer==3.5.3",
    "idna==3.20", "urllib3==2.8.0", "python-dateutil==4.0.0", "six==1.17.0",
    "tzdata==2026.6", "packaging==26.4", "attrs==26.1.0",
)  # fmt: skip
NPM_REAL = (  # none has dependencies of its own (`npm view PKG@VER dependencies`)
    "lodash@4.18.1", "ms@2.1.3", "commander@14.0.3", "semver@7.8.6", "uuid@14.0.3",
    "dayjs@1.11.23", "minimist@1.2.8", "clsx@2.1.1", "classnames@2.5.1", "nanoid@5.1.12",
    "picocolors@1.1.1", "kleur@4.1.5", "escape-string-regexp@5.0.0", "fast-deep-equal@3.1.3",
    "deepmerge@4.3.1", "is-number@7.0.0", "balanced-match@5.0.0", "ansi-regex@6.6.0",
    "chalk@5.6.2", "dotenv@18.0.10",
)  # fmt: skip
PYPI = "https://pypi.org/simple/"
NPMJS = "https://registry.npmjs.org/"


class Unfetchable(Exception):
    """A file of the real set could not be fetched or did not match its registry's digest."""


def _get(url: str, accept: str = "application/json") -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
        raise Unfetchable(f"{url} ({getattr(e, 'reason', e)})") from None


def _get_json(url: str, accept: str = "application/json") -> dict:
    try:
        return json.loads(_get(url, accept))
    except ValueError:
        raise Unfetchable(f"{url} (not JSON)") from None


def _cache_root() -> Path:
    import platformdirs  # krate's own dependency; only the real set needs it

    return platformdirs.user_cache_path("krate-bench") / "pkg"


class _Cache:
    """A folder of verified files and `digests.json` ({pin: [file, digest]}): a file is
    reused only while it still has the digest its registry published."""

    def __init__(self, folder: Path, algorithm: str) -> None:
        self.folder, self.algorithm = folder, algorithm
        self.index = folder / "digests.json"
        self.known = json.loads(self.index.read_text()) if self.index.is_file() else {}

    def digest(self, data: bytes) -> str:
        if self.algorithm == "sha512":  # npm's `integrity`
            return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        return hashlib.sha256(data).hexdigest()

    def get(self, pin: str) -> Path | None:
        name, digest = self.known.get(pin, ("", ""))
        path = self.folder / name
        ok = name and path.is_file() and self.digest(path.read_bytes()) == digest
        return path if ok else None

    def put(self, pin: str, name: str, data: bytes, published: str) -> Path:
        if self.digest(data) != published:
            raise Unfetchable(f"{name}: its {self.algorithm} is not the one the registry publishes")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(data)
        self.known[pin] = [name, published]
        self.index.write_text(json.dumps(self.known, indent=1, sort_keys=True))
        return self.folder / name


def real_wheels(root: Path) -> list[Path]:
    """PIP_REAL's wheels for PYTHON, from the cache or downloaded once from PyPI by PYTHON's
    own pip (which picks the wheel its interpreter installs), checked against PyPI's sha256."""
    code = "import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())"
    tag = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    cache = _Cache(root / f"pip-{'-'.join(tag.stdout.split())}", "sha256")
    missing = [pin for pin in PIP_REAL if cache.get(pin) is None]
    if missing:
        published = {}  # filename -> sha256, from PyPI's JSON simple pages
        for pin in missing:
            url = f"{PYPI}{pin.partition('==')[0]}/"
            files = _get_json(url, "application/vnd.pypi.simple.v1+json").get("files", [])
            published.update({f["filename"]: f.get("hashes", {}).get("sha256", "") for f in files})
        with tempfile.TemporaryDirectory() as tmp:
            argv = [
                PYTHON, "-m", "pip", "download", "--isolated", "--quiet", "--no-deps",
                "--only-binary=:all:", "--retries", "1", "--timeout", "20",
                "--index-url", PYPI, "--dest", tmp, *missing,
            ]  # fmt: skip
            env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}  # not this machine's indexes
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
                raise Unfetchable(f"pip download from {PYPI} failed ({last})")
            for wheel in Path(tmp).glob("*.whl"):
                name, version = wheel.name.split("-")[:2]
                for pin in (p for p in missing if _same(p, name, version)):
                    cache.put(pin, wheel.name, wheel.read_bytes(), published.get(wheel.name, ""))
    return [cache.get(pin) or _lost(pin) for pin in PIP_REAL]


def _same(pin: str, name: str, version: str) -> bool:
    """Whether a wheel's file name parts (`charset_normalizer`, `3.5.3`) are the pin's."""
    want, _, want_version = pin.partition("==")
    return re.sub(r"[-_.]+", "_", want).lower() == name.lower() and want_version == version


def _lost(pin: str) -> Path:
    raise Unfetchable(f"{pin}: not in the download")


def real_tarballs(root: Path) -> list[Path]:
    """NPM_REAL's tarballs, from the cache or downloaded once from the npm registry,
    checked against the registry's `dist.integrity` (sha512)."""
    cache = _Cache(root / "npm", "sha512")
    for pin in NPM_REAL:
        if cache.get(pin) is None:
            name, _, version = pin.rpartition("@")
            url = f"{NPMJS}{name}/{version}"
            dist = _get_json(url).get("dist", {})
            if "tarball" not in dist:
                raise Unfetchable(f"{url} (no dist.tarball)")
            filename = dist["tarball"].rsplit("/", 1)[-1]
            cache.put(pin, filename, _get(dist["tarball"], "*/*"), dist.get("integrity", ""))
    return [cache.get(pin) or _lost(pin) for pin in NPM_REAL]


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
    # The last run's files written out first: their write-back would otherwise slow
    # whichever arm came next.
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench_pkg: {' '.join(argv[:6])} ... failed:\n{done.stderr.decode()[-2000:]}")
    return elapsed


class Setup:
    def __init__(self, base: Path, real: tuple[list[Path], list[Path]] | None) -> None:
        self.base = base
        self.home = base / "home"
        self.ws = self.home / "project"
        self.krate_home = base / "krate-home"
        self.ws.mkdir(parents=True)
        for cache in (".npm", ".cache/pip"):  # as on a machine that has used npm and pip
            (self.home / cache).mkdir(parents=True)
        if real:
            wheels = [pin.partition("==")[0] for pin in PIP_REAL]
            npms = {n: v for n, _, v in (pin.rpartition("@") for pin in NPM_REAL)}
        else:
            wheels = [f"krate-bench-py{i:02d}" for i in range(10)]
            npms = {f"krate-bench-js{i:02d}": "1.0.0" for i in range(20)}
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
        port = free_port()
        npm_base = f"http://{self.names['npm']}:{port}"
        if real:
            index_from_wheels(base / "py", real[0])
            registry_from_tarballs(base / "npm", real[1], npm_base)
        else:
            make_simple_index(base / "py", wheels)
            make_npm_registry(base / "npm", list(npms), npm_base)
        self.py = Server(base / "py")
        self.npm = Server(base / "npm", npm=True, port=port)
        py_url = f"http://{self.names['py']}:{self.py.port}"
        npm_url = f"http://{self.names['npm']}:{self.npm.port}"
        deps = ", ".join(f'"{n}": "{v}"' for n, v in npms.items())
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
        # A project's own virtual environment, as a user installs into: made once here (with
        # pip, by ensurepip), copied fresh into the workspace before every pip run of either
        # arm (`fresh_venv`), and never timed.
        self.venv_template = base / "venv-template"
        make = [PYTHON, "-m", "venv", str(self.venv_template)]
        subprocess.run(make, check=True, stdout=subprocess.DEVNULL)
        pins = PIP_REAL if real else wheels
        (self.ws / "requirements.txt").write_text("".join(f"{pin}\n" for pin in pins))
        self.pip = [
            ".venv/bin/python", "-m", "pip", "install", "--isolated", "--quiet", "--no-input",
            "--trusted-host", self.names["py"], "--index-url", f"{py_url}/simple/",
            "-r", "requirements.txt",
        ]  # fmt: skip
        self.npm_argv = [
            "npm", "install", "--registry", f"{npm_url}/", "--no-audit", "--no-fund",
            "--no-update-notifier", "--loglevel", "error",
        ]  # fmt: skip

    def fresh_venv(self) -> None:
        venv = self.ws / ".venv"
        _clear(venv)
        shutil.copytree(self.venv_template, venv, symlinks=True)

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
    outputs = (ws / "node_modules", ws / "package-lock.json")
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
                    if name == "pip":
                        setup.fresh_venv()
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
    parser.add_argument(
        "--set",
        choices=("real", "synthetic"),
        default="real",
        help="real: pinned PyPI/npm packages (fetched once, cached); synthetic: empty ones",
    )
    args = parser.parse_args()
    for tool in ("npm", PYTHON):
        if shutil.which(tool) is None:
            print(f"bench_pkg: {tool} not found; skipped")
            return 0
    real = None
    if args.set == "real":
        root = _cache_root()
        try:
            real = (real_wheels(root), real_tarballs(root))
        except Unfetchable as e:
            print(
                f"bench_pkg: could not fetch the real set into {root}: {e}; "
                "`--set synthetic` runs without the registries",
                file=sys.stderr,
            )
            return 2
    # Under /var/tmp: the sandbox's /tmp is private, so a workspace there would be hidden.
    base = Path(tempfile.mkdtemp(prefix="krate-bench-pkg-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    setup = Setup(base, real)
    try:
        results = compare(setup, args.runs)
    finally:
        setup.close()
        shutil.rmtree(base, ignore_errors=True)
    missed = []
    *rows, fixed = results
    extra = fixed.krate - fixed.bare  # krate's fixed cost, paid by every row
    head = f"{'comparison':<28} {'bare s':>8} {'krate s':>8} {'ratio':>6} {'net':>5} {'conns':>5}"
    if real:
        what = f"real set: pip {len(PIP_REAL)} wheels from PyPI, npm {len(NPM_REAL)} packages"
    else:
        what = "synthetic set: 10 empty wheels, 20 empty npm packages (the worst case)"
    print(f"bench_pkg, {what}, {args.runs} runs, medians")
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
