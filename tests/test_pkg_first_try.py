"""Issue 18's bar, end to end: `pip install` and `npm install` with the default profile where
the registries resolve to private addresses work after the one line krate's summary prints.

Real runs of the installed `krate` (as root and as an ordinary user) with real bubblewrap,
real pip and npm, loopback mirrors (tests/pkgmirror_support.py). krate is started under
bubblewrap with its own /etc/hosts (as tests/test_egress_hints.py does), where the
registry names of the default profile resolve to a loopback address, as a corporate
network's split DNS makes them resolve to its mirror: the first install fails, krate's
stderr names the host, the reason and the line that allows it; that line, applied
literally (the flag, then separately the `krate policy allow --private` command it
prints), makes the same install succeed, through krate's own package caches. A second
name resolving to the same mirror, the mirror's address itself and a client that ignores
the proxy stay refused, and each refusal is recorded.

The registries listen on port 80 (the profile allows their web ports), on a loopback
address of their own: binding it needs root (or a lowered ip_unprivileged_port_start),
else those tests skip. A mirror name the profile does not list (mirror.corp.example:PORT)
takes two lines, each printed by krate: a denied name is never resolved (resolving it
would let a workload send any name to DNS), so only the second refusal can say that the
name resolves privately.
"""

from __future__ import annotations

import errno
import os
import pwd
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import KRATE, chown_tree
from .pkgmirror_support import Server, make_npm_registry, make_simple_index

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

PIP_NAME, NPM_NAME = "pypi.org", "registry.npmjs.org"  # in the default profile
MIRROR = "mirror.corp.example"  # a corporate mirror the profile does not name
OTHER = "other.corp.example"  # resolves to the mirror too; never allowed
WHEEL = "krate-wheel-one"
PACKAGES = ["krate-npm-a", "krate-npm-b"]
PIP_ENV = {
    "PIP_CONFIG_FILE": os.devnull,  # not this machine's file:// indexes
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_ROOT_USER_ACTION": "ignore",
}
CURL = "curl -s -o /dev/null --max-time 10 -w '%{http_code}\\n'"
# The summary's line for one host, and its policy-side fix.
FLAG = re.compile(r"; allow with (--allow-(?:private-)?host) (\S+)$")
COMMAND = re.compile(r"^krate: +or for every run: krate (policy allow --private \S+)$", re.M)


def pip(index: str, host: str) -> list[str]:
    return ["pip", "install", "-i", index, "--trusted-host", host, "--target", "pylib", WHEEL]


def _on_port_80(root: Path, npm: bool = False) -> Server:
    """A mirror on port 80 of a loopback address no other test uses."""
    for _ in range(20):
        address = (
            f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        )
        try:
            return Server(root, npm=npm, port=80, host=address)
        except PermissionError:
            pytest.skip("binding port 80 on loopback needs root")
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    pytest.skip("no free loopback address with port 80")


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    """PyPI's and npm's names served from loopback: (pip Server, npm Server)."""
    root = tmp_path_factory.mktemp("registries")
    os.chmod(root, 0o755)
    make_simple_index(root / "py", [WHEEL])
    make_npm_registry(root / "npm", PACKAGES, f"http://{NPM_NAME}")
    py = _on_port_80(root / "py")
    npm = _on_port_80(root / "npm", npm=True)
    yield py, npm
    py.close()
    npm.close()


@pytest.fixture(scope="module")
def corp(tmp_path_factory):
    """The same simple index on a random port of 127.0.0.1, for mirror.corp.example:PORT."""
    root = tmp_path_factory.mktemp("corp")
    os.chmod(root, 0o755)
    make_simple_index(root / "py", [WHEEL])
    server = Server(root / "py")
    yield server
    server.close()


def mapped(box, names: dict[str, str]):
    """The installed krate in `box`, started with `names` resolving to their addresses."""
    hosts = box.base / "hosts"
    lines = ["127.0.0.1 localhost", "::1 localhost", *(f"{a} {n}" for n, a in names.items())]
    hosts.write_text("\n".join(lines) + "\n")
    hosts.chmod(0o644)

    def krate(*args: str) -> subprocess.CompletedProcess:
        argv = ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(hosts), "/etc/hosts"]
        kw: dict = {"env": box.env(**PIP_ENV), "cwd": box.ws, "capture_output": True}
        kw["text"] = True
        if box.user:
            kw.update(user=box.user, group=pwd.getpwnam(box.user).pw_gid, extra_groups=[])
        return subprocess.run([*argv, KRATE, *box.args(args)], timeout=180, **kw)

    return krate


def one_line(stderr: str, host: str, port: int, address: str) -> tuple[list[str], list[str]]:
    """What the summary says about `host`: its reason is the private address, and the one
    line that allows it, as a flag and as the policy command. Returns (flag, command)."""
    subject = host if port in (80, 443) else f"{host}:{port}"
    (line,) = [x for x in stderr.splitlines() if x.startswith(f"krate:   {host}:{port} (")]
    assert f"resolves to {address} (loopback address" in line, stderr
    found = FLAG.search(line)
    assert found is not None, line
    flag = list(found.groups())
    assert flag == ["--allow-private-host", host], line
    (command,) = COMMAND.findall(stderr)
    assert command == f"policy allow --private {subject}", stderr
    assert "krate: details: krate runs show last" in stderr
    return flag, command.split()


def network(box) -> list[dict]:
    return [d for d in box.last_run()["decisions"] if d.get("area") == "network"]


def caches(box: object, tool: str) -> list[Path]:
    return [f for f in (box.krate_home / "caches").glob(f"*/{tool}/**/*") if f.is_file()]


def installed(box, out, host: str, by: str) -> None:
    """The install went through, only to `host`, allowed by the opt-in `by`, via krate's cache."""
    assert out.returncode == 0, out.stdout + out.stderr
    assert "refused" not in out.stderr, out.stderr
    decisions = network(box)
    assert decisions and all(d["verdict"] == "allow" for d in decisions), decisions
    assert {d["host"] for d in decisions} == {host}, decisions
    assert all(d["reason"] == f"private address allowed by {by}" for d in decisions), decisions


def stays_refused(box, krate, address: str) -> None:
    """The other name, the mirror's address and a client ignoring the proxy: all refused."""
    script = (
        f"{CURL} http://{OTHER}/; {CURL} http://{address}/; "
        f"{CURL} --noproxy '*' http://{OTHER}/ || echo direct-failed"
    )
    out = krate("run", "--", "sh", "-c", script)
    assert out.stdout.split() == ["403", "403", "000", "direct-failed"], out
    denied = {(d["host"], d["verdict"]) for d in network(box)}
    assert (OTHER, "deny") in denied and (address, "deny") in denied, denied
    assert all(v == "deny" for _, v in denied), denied
    assert f"{OTHER}:80" in out.stderr and "allow with --allow-host" in out.stderr


def _own(box, *paths: Path) -> None:
    if box.user:
        for path in paths:
            chown_tree(path, box.user)


def test_pip_install_works_after_the_one_line_the_summary_prints(box, registries):
    py, _ = registries
    address = py.url.removeprefix("http://").split(":")[0]
    krate = mapped(box, {PIP_NAME: address, OTHER: address})
    argv = pip(f"http://{PIP_NAME}/simple", PIP_NAME)

    first = krate("run", "--", *argv)
    assert first.returncode != 0, first.stdout
    assert not (box.ws / "pylib").exists()
    flag, command = one_line(first.stderr, PIP_NAME, 80, address)
    assert {d["verdict"] for d in network(box)} == {"deny"}  # recorded, nothing let through

    with_flag = krate("run", *flag, "--", *argv)
    installed(box, with_flag, PIP_NAME, f"--allow-private-host {PIP_NAME}")
    assert (box.ws / "pylib" / "krate_wheel_one" / "__init__.py").exists()
    assert caches(box, "pip"), "pip used krate's cache"
    assert not (box.home / ".cache").exists()  # never the user's own

    shutil.rmtree(box.ws / "pylib")
    applied = krate(*command)
    assert applied.returncode == 0, applied.stderr
    again = krate("run", "--", *argv)
    installed(box, again, PIP_NAME, f"network.private_ok: {PIP_NAME}")
    assert (box.ws / "pylib" / "krate_wheel_one" / "__init__.py").exists()
    stays_refused(box, krate, address)


def test_npm_install_works_after_the_one_line_the_summary_prints(box, registries):
    _, npm = registries
    address = npm.url.removeprefix("http://").split(":")[0]
    krate = mapped(box, {NPM_NAME: address, OTHER: address})
    deps = ", ".join(f'"{n}": "1.0.0"' for n in PACKAGES)
    (box.ws / "package.json").write_text(
        f'{{"name": "p", "version": "1.0.0", "dependencies": {{{deps}}}}}'
    )
    (box.ws / ".npmrc").write_text(
        f"registry=http://{NPM_NAME}/\naudit=false\nfund=false\nupdate-notifier=false\n"
    )
    _own(box, box.ws / "package.json", box.ws / ".npmrc")

    first = krate("run", "--", "npm", "install")
    assert first.returncode != 0, first.stdout
    assert not (box.ws / "node_modules" / PACKAGES[0]).exists()
    flag, command = one_line(first.stderr, NPM_NAME, 80, address)

    with_flag = krate("run", *flag, "--", "npm", "install")
    installed(box, with_flag, NPM_NAME, f"--allow-private-host {NPM_NAME}")
    assert (box.ws / "node_modules" / PACKAGES[1] / "index.js").exists()
    assert caches(box, "npm"), "npm used krate's cache"
    assert not (box.home / ".npm").exists()
    assert "Unknown env config" not in with_flag.stderr  # krate sets only variables npm knows

    shutil.rmtree(box.ws / "node_modules")
    (box.ws / "package-lock.json").unlink()
    cached = krate("run", "--", "npm", "install")  # no opt-in: krate's cache serves it all
    assert cached.returncode == 0 and "refused" not in cached.stderr, cached.stderr
    assert network(box) == [] and (box.ws / "node_modules" / PACKAGES[0]).exists()

    for path in (box.ws / "node_modules", box.ws / "package-lock.json", *caches(box, "npm")):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    applied = krate(*command)
    assert applied.returncode == 0, applied.stderr
    again = krate("run", "--", "npm", "install")
    installed(box, again, NPM_NAME, f"network.private_ok: {NPM_NAME}")
    assert (box.ws / "node_modules" / PACKAGES[0] / "index.js").exists()
    stays_refused(box, krate, address)


def test_a_mirror_the_profile_does_not_name_takes_the_two_lines_krate_prints(box, corp):
    """Its first refusal cannot know the name resolves privately (a denied name is never
    resolved); each refusal names the next line, and the policy command then suffices."""
    krate = mapped(box, {MIRROR: "127.0.0.1", OTHER: "127.0.0.1"})
    subject = f"{MIRROR}:{corp.port}"
    argv = pip(f"http://{subject}/simple", MIRROR)
    first = krate("run", "--", *argv)
    assert first.returncode != 0
    (line,) = [x for x in first.stderr.splitlines() if x.startswith(f"krate:   {subject} (")]
    assert "not in network.allow" in line and line.endswith(f"allow with --allow-host {subject}")
    second = krate("run", "--allow-host", subject, "--", *argv)
    assert second.returncode != 0
    flag, command = one_line(second.stderr, MIRROR, corp.port, "127.0.0.1")
    with_flags = krate("run", "--allow-host", subject, *flag, "--", *argv)
    installed(box, with_flags, MIRROR, f"--allow-private-host {MIRROR}")
    shutil.rmtree(box.ws / "pylib")
    assert krate(*command).returncode == 0  # writes private_ok and add: no flag needed
    again = krate("run", "--", *argv)
    installed(box, again, MIRROR, f"network.private_ok: {MIRROR}")
