"""`krate audit network --prove`: its command list, its layers, and a clean install passing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from krate.cli.app import app
from krate.netguard import (
    ledger,
    lockdown,
    observer,
    proof,
    proof_early,
    proof_layers,
    proof_run,
    static,
)
from krate.netguard.commands import command_path, leaf_commands
from krate.paths import Paths
from krate.store import events, open_store

from .conftest import KRATE, as_root, run_krate

LINUX = sys.platform.startswith("linux")


def registered() -> set[tuple[str, ...]]:
    return set(leaf_commands(typer.main.get_command(app)))


def test_plan_covers_every_registered_command_exactly_once():
    items = proof.plan(typer.main.get_command(app))
    planned = [tuple(i.command.split()) for i in items if i.mode in ("safe", "help", "real")]
    planned = [p for p in planned if p != ("krate",)]
    assert sorted(planned) == sorted(registered())
    assert {i.mode for i in items} >= {"help", "real", "fast path", "completion"}


def test_every_command_has_a_safe_invocation_or_falls_back_to_help():
    for item in proof.plan(typer.main.get_command(app)):
        if item.mode == "safe":
            path = tuple(item.command.split())
            assert item.argv[: len(path)] == list(path)
            assert path in proof.SAFE_INVOCATIONS
            assert path[0] not in lockdown.DEFERRED_COMMANDS
        elif item.mode == "help":
            assert item.argv[-1] == "--help"
        elif item.mode == "real":
            assert item.argv[0] in ("run", "build") and item.fresh


def test_run_and_build_are_really_run_login_and_push_through_help_only():
    class Group:
        def __init__(self, commands):
            self.commands = commands

    class Leaf:
        pass

    root = Group({"push": Leaf(), "audit": Group({"head": Leaf()}), "run": Leaf()})
    by_name = {i.command: i for i in proof.plan(root)}
    assert by_name["push"].argv == ["push", "--help"] and "network purpose" in by_name["push"].note
    assert by_name["run"].argv == as_root(["run", "--", "touch", "ran"])
    assert by_name["run"].mode == "real" and by_name["run"].marker == "ran"
    assert by_name["audit head"].mode == "safe"
    assert command_path(root, ["audit", "head", "--json"]) == ("audit", "head")
    assert command_path(root, ["push", "dist/app.tar.gz"]) == ("push",)


def test_a_new_command_is_covered_without_editing_the_proof():
    extra = typer.Typer()

    @extra.command("brand-new")
    def brand_new() -> None:
        """A command nobody told the proof about."""

    root = typer.main.get_command(app)
    root.commands["zz-new"] = typer.main.get_command(extra)
    try:
        items = {i.command: i for i in proof.plan(root)}
    finally:
        del root.commands["zz-new"]
    assert items["zz-new"].argv == ["zz-new", "--help"]


STRACE_LOG = """\
100 execve("/venv/bin/krate", ["krate"], 0x7ff /* 3 vars */) = 0
100 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=14, filter=0x7f}) = 0
100 socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0) = 3<UNIX:[1]>
100 connect(3<UNIX:[1]>, {sa_family=AF_UNIX, sun_path="/run/dbus"}, 20) = 0
100 socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) = 4<NETLINK:[2]>
100 socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = -1 EACCES (Permission denied)
101 execve("/usr/bin/curl", ["curl"], 0x7ff /* 3 vars */) = 0
101 socket(AF_INET6, SOCK_DGRAM, IPPROTO_IP) = 5<UDPv6:[3]>
101 connect(5<UDPv6:[3]>, {sa_family=AF_INET6, sin6_port=htons(53)}, 28 <unfinished ...>
100 io_uring_setup(4, 0x7ffc) = -1 ENOSYS (Function not implemented)
101 <... connect resumed>) = 0
101 sendto(5<UDPv6:[3]>, ""..., 30, MSG_NOSIGNAL, NULL, 0) = 30
100 +++ exited with 0 +++
"""


def test_strace_log_is_classified_none_refused_created_sent():
    obs = observer.classify(STRACE_LOG)
    got = [(a.pid, a.program, a.syscall, a.family, a.result, a.errno) for a in obs.attempts]
    assert got == [
        (100, "/venv/bin/krate", "socket", "AF_INET", "refused", "EACCES"),
        (101, "/usr/bin/curl", "socket", "AF_INET6", "created", None),
        (100, "/venv/bin/krate", "io_uring_setup", "io_uring", "refused", "ENOSYS"),
        (101, "/usr/bin/curl", "connect", "UDPv6", "sent", None),  # joined when resumed
        (101, "/usr/bin/curl", "sendto", "UDPv6", "sent", None),
    ]
    assert obs.classification == "sent"
    assert obs.lockdown_calls == 1 and obs.processes == 2
    quiet = observer.classify(STRACE_LOG.split("100 socket(AF_INET,")[0])
    assert quiet.classification == "none" and quiet.attempts == []
    refused = observer.classify(
        "7 connect(3<TCP:[9]>, {sa_family=AF_INET, sin_port=htons(443)}, 16) = -1 ENETUNREACH (x)\n"
    )
    assert refused.classification == "refused"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "krate"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_import_contract_allows_network_modules_only_in_the_helpers(tmp_path):
    ok = _package(
        tmp_path,
        {
            "egress/proxy.py": "import socket, ssl\n",
            "registry/transport.py": "import http.client\n",
            "store/x.py": "import sqlite3\nfrom urllib.parse import urlsplit\nimport http\n",
        },
    )
    result = static.import_contract(ok)
    assert result["ok"] and result["violations"] == []
    assert "egress/proxy.py: socket" in result["helper_imports"]

    for bad, module in (
        ("import socket\n", "socket"),
        ("from http import client\n", "http.client"),
        ("from urllib.request import urlopen\n", "urllib.request"),
        ("import importlib\nimportlib.import_module('ssl')\n", "ssl"),
        ("def f():\n    import requests\n", "requests"),
    ):
        shutil.rmtree(tmp_path / "krate")
        pkg = _package(tmp_path, {"cli/sneaky.py": bad})
        result = static.import_contract(pkg)
        assert not result["ok"], bad
        assert module in {v["module"] for v in result["violations"]}
        assert result["violations"][0]["file"] == "cli/sneaky.py"


def test_krate_itself_keeps_the_import_contract():
    import krate

    result = static.import_contract(Path(krate.__file__).parent)
    assert result["ok"], result["violations"]


def _dist(site: Path, name: str, files: dict[str, bytes]) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{rel},sha256={digest},{len(data)}")
    lines.append(f"{name}-1.0.dist-info/RECORD,,")
    (info / "RECORD").write_text("\n".join(lines) + "\n")


def test_record_hashes_catch_an_installed_file_edited_after_install(tmp_path):
    site = tmp_path / "site"
    _dist(site, "demo", {"demo/__init__.py": b"x = 1\n", "demo/util.py": b"y = 2\n"})
    clean = static.record_hashes([str(site)])
    assert clean["ok"] and clean["files_checked"] == 2
    (site / "demo" / "util.py").write_bytes(b"import socket\n")
    (site / "demo" / "__init__.py").unlink()
    tampered = static.record_hashes([str(site)])
    assert not tampered["ok"]
    assert tampered["mismatched"] == [str(site / "demo" / "util.py")]
    assert tampered["missing"] == [str(site / "demo" / "__init__.py")]


def test_code_loading_hooks_are_listed(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("")
    environ = {
        "PYTHONPATH": "/opt/evil",
        "LD_PRELOAD": "/opt/evil.so",
        "DYLD_INSERT_LIBRARIES": "/opt/evil.dylib",
        "PYTHON_KEYRING_BACKEND": "evil.Backend",
        "HOME": str(tmp_path),
    }
    hooks = static.code_loading_hooks(environ, [str(tmp_path), *sys.path])
    kinds = {h["kind"]: h["where"] for h in hooks}
    assert kinds["$PYTHONPATH"] == "/opt/evil"
    assert kinds["$LD_PRELOAD"] == "/opt/evil.so"
    assert kinds["$DYLD_INSERT_LIBRARIES"] == "/opt/evil.dylib"
    assert kinds["$PYTHON_KEYRING_BACKEND"] == "evil.Backend"
    assert kinds["sitecustomize"] == str(tmp_path / "sitecustomize.py")
    assert any(k == "entry point keyring.backends" for k in kinds)
    assert any(h["kind"].startswith(".pth") for h in hooks)


@pytest.mark.skipif(not LINUX, reason="the kernel layer is implemented for Linux here")
def test_prove_passes_on_a_clean_install_even_with_egress_recorded(krate_home):
    # krate's own helpers' egress and workload traffic are recorded, not failures.
    with open_store(Paths(krate_home, krate_home)) as store:
        events.append(
            store,
            ledger.EVENT_KIND,
            ledger.Egress("ghcr.io", 443, "connected", None).event_data(
                "krate push", "registry-transport"
            ),
        )
        events.append(
            store,
            "policy.decision",
            {"area": "network", "host": "x.example", "port": 443, "verdict": "allow"},
        )
    result = run_krate("audit", "network", "--prove", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"proven", "commands", "layers"}
    assert set(out["layers"]) == {
        "kernel", "guard", "os", "static", "startup", "helpers", "bytecode"
    }  # fmt: skip
    layers = out["layers"]
    assert all(layer["agrees"] for layer in layers.values() if layer["checked"])
    assert layers["kernel"]["checked"] and layers["kernel"]["child_probe"]["result"] == "refused"
    assert layers["guard"]["checked"] and layers["guard"]["attempts"] == 0
    assert layers["static"]["import_contract"]["ok"]
    assert all(c["outbound_attempts"] == 0 for c in out["commands"])
    commands = {tuple(c["argv"][1:]) for c in out["commands"]}
    for path in registered():
        assert any(argv[: len(path)] == path for argv in commands), path
    if shutil.which("strace") and shutil.which("bwrap"):
        real = [(c["command"], c["exit_code"], c.get("stderr_tail"), c.get("startup"))
                for c in out["commands"] if c["mode"] == "real"]  # fmt: skip
        assert out["proven"] is True, (out["summary"], str(real)[:3000])
        assert out["verdict"] == "proven"
        assert layers["os"]["checked"] and layers["os"]["inet_syscalls"] == 0
        real = layers["startup"]["real_runs"]
        assert set(real) == {"run", "build"} and layers["startup"]["checked"]
        assert all(r["locked_down"] and r["exit_code"] == 0 for r in real.values())
        assert "egress proxy" in real["run"]["helpers"]  # the default policy starts it
        # Their workloads really ran: each left its file, and the fresh store agrees.
        for name in ("run", "build"):
            workload = real[name]["workload"]
            assert workload["ran"] and workload["marker_found"], (name, workload)
            assert workload["recorded"]["status"] == "finished", (name, workload)
            assert workload["recorded"]["exit_code"] == 0
        assert real["build"]["workload"]["recorded"]["artifact"] is True
        assert layers["startup"]["third_party_while_unlocked"] == []
        assert layers["helpers"]["agrees"] and layers["bytecode"]["agrees"]
        missing = layers["kernel"]["per_command"]["missing"]
        assert missing == [], f"commands that did not apply their own lockdown: {missing}"
    # The user's store was not touched by the proof.
    with open_store(Paths(krate_home, krate_home), readonly=True) as store:
        assert events.count(store) == 2


@pytest.mark.skipif(not (shutil.which("strace") and shutil.which("bwrap")), reason="needs both")
def test_prove_real_runs_run_their_workload_as_an_ordinary_user(ordinary_user, user_tmp):
    if ordinary_user is None:
        pytest.skip("needs root to create the ordinary user")
    env = {"PATH": os.environ["PATH"], "HOME": str(user_tmp), "KRATE_HOME": str(user_tmp / "k")}
    result = run_krate("audit", "network", "--prove", "--json", env=env, user=ordinary_user,
                       cwd=user_tmp)  # fmt: skip
    out = json.loads(result.stdout)
    real = out["layers"]["startup"]["real_runs"]
    assert all(r["workload"]["ran"] for r in real.values()), real
    assert "--as-root" not in str([c["argv"] for c in out["commands"]])
    assert out["verdict"] == "proven" and result.returncode == 0, out["summary"]


LOCKED_PARENT = (
    "import subprocess, sys\n"
    "from krate.netguard import lockdown\n"
    "assert lockdown.apply()['applied']\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)\n"
    "sys.stdout.write(done.stdout); sys.stderr.write(done.stderr); sys.exit(done.returncode)\n"
)


@pytest.mark.skipif(not (LINUX and shutil.which("bwrap")), reason="needs the Linux sandbox")
def test_prove_does_not_count_real_runs_whose_workload_could_not_run(krate_home):
    """Started from a locked-down parent, the real runs' sandboxes cannot start their workload
    (the egress bridge is refused its loopback socket): the proof must say so, not "proven"."""
    result = subprocess.run(
        [sys.executable, "-c", LOCKED_PARENT, KRATE, "audit", "network", "--prove", "--json"],
        capture_output=True,
        text=True,
        timeout=320,
    )
    out = json.loads(result.stdout)
    startup = out["layers"]["startup"]
    assert startup["checked"] is False and out["proven"] is False, out["summary"]
    assert "startup" in out["summary"] and out["verdict"] != "proven"
    assert set(startup["real_runs"]) == {"run", "build"}
    for name, run in startup["real_runs"].items():
        assert run["workload"]["ran"] is False and not run["workload"]["marker_found"], name
    assert "left no 'ran'" in startup["why"] and "left no 'out'" in startup["why"]
    assert result.returncode == 0  # unchecked lowers the verdict; nothing checked disagrees


@pytest.mark.parametrize(
    ("workload", "why"),
    [
        (["true"], "its workload left no 'ran'"),  # exits 0, leaves nothing
        (["sh", "-c", "touch ran; exit 3"], "its store disagrees"),  # fails after the file
    ],
)
@pytest.mark.skipif(not (LINUX and shutil.which("bwrap")), reason="needs the Linux sandbox")
def test_a_real_run_counts_only_when_its_workload_ran_and_was_recorded(tmp_path, workload, why):
    item = proof_early.real_invocations()[("run",)]
    item.argv = [*item.argv[: item.argv.index("--") + 1], *workload]
    no_observers = proof_run.Observers(strace=None, bwrap=None, seatbelt=None)
    row = proof_run.run_one(item, [KRATE], os.environ, tmp_path / "home", tmp_path, no_observers)
    assert row["workload"]["ran"] is False and row["workload"]["why"].startswith(why), row
    layer = proof_layers.startup_layer([row], strace="strace")
    assert layer["checked"] is False and why in layer["why"]
    from krate.netguard import proof_report

    text = proof_report._startup(layer)  # the human report says why, too
    assert text[0].startswith("startup UNCHECKED") and why in text[1], text


def test_a_proof_that_stops_early_ends_its_real_runs(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), KRATE_HOME=str(tmp_path / "home"))
    result = run_krate("audit", "network", "--prove", "--no-such-option", env=env)
    assert result.returncode == 2 and "no-such-option" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("krate-prove-*"))  # its folder (and runs) are gone


@pytest.mark.skipif(not LINUX, reason="the kernel layer is implemented for Linux here")
def test_prove_downgrades_the_verdict_when_a_layer_cannot_be_checked(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = dict(os.environ, PATH=str(bindir))  # no strace, no bwrap
    result = run_krate("audit", "network", "--prove", "--json", env=env)
    out = json.loads(result.stdout)
    assert out["layers"]["os"]["checked"] is False
    assert out["proven"] is False and out["verdict"] == "consistent"
    assert result.returncode == 0  # nothing that was checked disagrees
    first = proof.lines(out)[0]
    assert first.startswith("consistent but not proven:") and "could not check: os" in first


def opened(pid: int, path: str) -> str:
    return f'{pid} openat(AT_FDCWD</w>, "{path}", O_RDONLY) = 3<{path}>'


SP = "/venv/site-packages"
STARTUP_LOG = "\n".join(
    [
        '10 execve("/venv/bin/krate", [...], 0x1 /* 3 vars */) = 0',
        opened(10, f"{SP}/x.pth"),
        opened(10, f"{SP}/krate/__init__.py"),
        "10 vfork() = 11",
        '11 execve("/usr/bin/python3", [...], 0x1 /* 2 vars */) = 0',
        opened(11, f"{SP}/krate/egress/proxy.py"),
        opened(11, "/usr/lib/python3/json/__pycache__/x.pyc"),
        "10 clone(child_stack=NULL, flags=SIGCHLD) = 12",
        opened(10, f"{SP}/evil/__init__.py"),
        "10 clone3({flags=CLONE_VM|CLONE_THREAD}, 88) = 13",
        opened(13, f"{SP}/krate/x.pyc"),
        "10 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=14}) = 0",
        opened(10, f"{SP}/typer/__init__.py"),
        "10 clone(child_stack=NULL, flags=SIGCHLD) = 14",
        "10 vfork() = 15",  # a helper killed before it opened its script: named by its argv
        f'15 execve("/usr/bin/python3", ["python3", "-I", "-S", "{SP}/krate/registry/transport.py"]'
        ", 0x1 /* 2 vars */) = 0",
        "12 +++ exited with 0 +++",
        "14 +++ exited with 0 +++",
        "11 +++ exited with 0 +++",
        "10 +++ exited with 0 +++",
    ]
)


def test_startup_analysis_of_an_strace_log():
    from krate.netguard import startup

    found = startup.analyse(STARTUP_LOG, "/venv/site-packages/krate")
    assert found["locked_down"] and found["helpers"] == ["egress proxy", "registry transport"]
    assert found["before_entry_point"] == ["/venv/site-packages/x.pth"]
    # evil loaded after krate's entry, before the lockdown; typer after it: fine.
    assert found["third_party_while_unlocked"] == [
        {"process": "krate", "path": "/venv/site-packages/evil/__init__.py"}
    ]
    # The fork (12) was alive at the lockdown; 14 was started after it; 11 is the helper.
    assert found["outlived_lockdown"] == [{"pid": 12, "program": "a fork of krate"}]
    assert set(found["bytecode"]) == {
        "/usr/lib/python3/json/__pycache__/x.pyc",  # the helper's
        "/venv/site-packages/krate/x.pyc",  # krate's thread, before the lockdown
    }


def test_the_human_report_renders_every_layer_as_before():
    """The text `krate audit network --prove` prints, pinned (netguard/proof_report.py)."""
    pinned = json.loads((Path(__file__).parent / "fixtures" / "proof_report.json").read_text())
    assert proof.lines(pinned["input"]) == pinned["text"]
