"""The network helpers import only the standard library and krate's own named files.

Attack: in an installed (non-editable) krate, site-packages is krate's own folder.
Files named like standard modules (pathlib, hashlib, fnmatch, ...) planted there
ran inside the egress proxy, with network access, and rewrote its decisions.
Each test plants them, drives the real helper through the installed `krate`,
and checks that no planted file ever ran, and that the decisions held.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from krate.netguard import helpercheck

from .conftest import as_root
from .egress_support import Server
from .plant_support import plant, purelib, report_file, reports
from .registry_server import needs_registry
from .registry_support import USER, events

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux helpers")
# Standard names the proxy and the transport import after start-up (pathlib first of all).
STDLIB_NAMES = ("pathlib", "hashlib", "fnmatch", "base64", "ipaddress")


@pytest.fixture
def planted(installed, tmp_path):
    """The installed krate with hostile standard-named modules in its site-packages."""
    site = purelib(installed)
    report = report_file(tmp_path / "report")
    files = [plant(site, name, report, patch=name == "pathlib") for name in STDLIB_NAMES]
    yield installed, report
    for path in files:
        path.unlink()


@pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")
def test_a_planted_standard_module_never_runs_in_the_egress_proxy(planted, tmp_path):
    venv, report = planted
    server = Server()
    try:
        home, ws = tmp_path / "krate-home", tmp_path / "ws"
        ws.mkdir()
        script = (
            f"curl -sS -o /dev/null -w '%{{http_code}}\\n' http://localhost:{server.port}/; "
            f"curl -sS -o /dev/null -w '%{{http_code}}\\n' http://localhost:{server.port + 1}/"
        )
        env = dict(os.environ, KRATE_HOME=str(home))
        krate = str(venv / "bin" / "krate")
        args = [*as_root(["run"]), "--policy", "strict", "--allow-host", f"localhost:{server.port}"]
        done = subprocess.run(
            [krate, *args, "--", "sh", "-c", script],
            cwd=ws, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["200", "403"]  # the other port is denied, not "planted"
        assert reports(report) == [], "a planted module ran"
        shown = subprocess.run(
            [krate, "runs", "show", "last", "--json"], env=env, capture_output=True, text=True
        )
        network = [d for d in json.loads(shown.stdout)["decisions"] if d.get("area") == "network"]
        assert [(d["port"], d["verdict"]) for d in network] == [
            (server.port, "allow"),
            (server.port + 1, "deny"),
        ]
        assert not [d for d in network if d["layer"] == "planted"]
    finally:
        server.close()


@needs_registry
def test_a_planted_standard_module_never_runs_in_the_registry_transport(
    planted, registry, password, tmp_path, keychain
):
    venv, report = planted
    home = tmp_path / "krate-home"
    env = keychain.env(KRATE_HOME=str(home))
    done = subprocess.run(
        [str(venv / "bin" / "krate"), "login", registry.name, "-u", USER, "--password-stdin"],
        input=password + "\n", env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert reports(report) == [], "a planted module ran"
    egress = events(home, "network.egress")
    assert {(e["host"], e["port"]) for e in egress} == {("127.0.0.1", registry.port)}


def test_each_helper_reports_only_the_standard_library_and_its_own_files(planted):
    """What `krate audit network --prove` checks, from the installed krate."""
    venv, report = planted
    code = (
        "import json, os, sys\n"
        "from krate.netguard import helpercheck\n"
        "print(json.dumps(helpercheck.check(sys.executable, os.environ)))\n"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120
    )
    layer = json.loads(done.stdout)
    assert layer["checked"] and layer["agrees"], layer
    proxy, transport = layer["helpers"]["egress proxy"], layer["helpers"]["registry transport"]
    for helper in (proxy, transport):
        assert helper["ok"] and helper["modules_loaded"] > 20
        assert helper["path"] == layer["standard_library"]  # nothing else, ever
    assert proxy["given_by_krate"] == [
        "krate", "krate.canonical", "krate.egress", "krate.egress.dial", "krate.egress.handler",
        "krate.egress.listener", "krate.egress.names", "krate.egress.parsers", "krate.egress.relay",
        "krate.egress.wire", "krate.egress.workers",
        "krate.errors", "krate.hostport", "krate.policy", "krate.policy.decide",
        "krate.policy.hosts", "krate.policy.model", "krate.policy.paths", "krate.records",
    ]  # fmt: skip
    assert transport["given_by_krate"] == []
    assert reports(report) == []


def test_the_check_fails_for_a_helper_with_site_packages_on_its_path(monkeypatch, tmp_path):
    """The hostile variant: a proxy that puts site-packages first on its path."""
    import site

    import krate.egress
    import krate.egress.spawn

    where = site.getsitepackages()[0]
    future = "from __future__ import annotations\n"
    hostile = tmp_path / "proxy.py"
    hostile.write_text(
        krate.egress.PROXY.read_text().replace(
            future, f"{future}import sys; sys.path.insert(0, {where!r})\n", 1
        )
    )
    assert helpercheck.check(sys.executable, os.environ)["agrees"]
    monkeypatch.setattr(krate.egress, "PROXY", hostile)
    monkeypatch.setattr(krate.egress.spawn, "PROXY", hostile)  # what the proxy is started from
    layer = helpercheck.check(sys.executable, os.environ)
    assert layer["checked"] and not layer["agrees"]
    proxy = layer["helpers"]["egress proxy"]
    assert not proxy["ok"] and proxy["foreign_path"] == [where]
    assert layer["helpers"]["registry transport"]["ok"]


def test_the_proxy_is_given_exactly_the_krate_modules_decide_imports():
    """helperlib.MODULES must follow the imports of proxy.py and its parts (or the proxy cannot
    start), and name nothing they do not import."""
    from pathlib import Path

    from krate.egress import helperlib
    from krate.netguard.static import imported_modules

    src = Path(helperlib.SRC)
    needed: set[str] = set()
    todo = [n for n, _ in imported_modules((src / "krate/egress/proxy.py").read_text())]
    while todo:
        module = todo.pop()
        rel = module.replace(".", "/") + ".py"
        if rel in needed or not (src / rel).is_file():
            continue
        needed.add(rel)
        for name, _line in imported_modules((src / rel).read_text()):
            if name.startswith("krate."):
                todo += [name, name.rsplit(".", 1)[0]]
    assert needed == set(helperlib.MODULES)


def test_the_proxy_is_named_krate_files_not_given_a_path():
    from pathlib import Path

    from krate.egress import helperlib

    given = helperlib.given()
    assert {n for n, e in given.items() if e.get("package")} == set(helperlib.PACKAGES)
    files = {n: e["file"] for n, e in given.items() if not e.get("package")}
    assert sorted(files.values()) == sorted(helperlib.files())
    for name, file in files.items():
        assert Path(file) == Path(helperlib.SRC) / (name.replace(".", "/") + ".py")
        assert Path(file).is_file()


def test_the_proxy_reads_no_private_attributes_and_asks_no_platform():
    """It hands a request's leftovers on through public API (no `reader._buffer`; the old
    proxy failed this on `_buffer` and `_eof`, and on `sys.platform`), and it
    trusts its configuration (`threads`) instead of asking which platform it is on."""
    import ast
    from pathlib import Path

    from krate.egress import helperlib

    for rel in ("krate/egress/proxy.py", *helperlib.PARTS):
        source = (Path(helperlib.SRC) / rel).read_text()
        private = [
            node.attr
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr != "_exit"  # os._exit: public, despite its name
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        ]
        assert private == [], (rel, private)
        assert "platform" not in source, rel
