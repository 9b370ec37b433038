"""`krate run`'s fast path (no Typer import) and the proxy started beside the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

import krate.egress
from krate.cli import fastrun
from krate.cli.app import build
from krate.egress import start_for_run
from krate.paths import Paths

from .egress_support import policy


@pytest.mark.parametrize("name", ["run", "build"])
def test_fast_parser_knows_exactly_the_options_of_the_typer_command(name):
    command = typer.main.get_command(build(name)).commands[name]
    typer_options = {opt for p in command.params for opt in p.opts if opt.startswith("-")}
    typer_options -= {"-h", "--help"}
    values, repeated, flags = fastrun.TABLES[name]
    assert {*values, *repeated, *flags} == typer_options


def test_common_forms_are_parsed_like_typer(tmp_path):
    parsed = fastrun.parse(
        ["run", "--allow-host", "a.example", "--allow-host", "b.example", "-v",
         "--workdir", str(tmp_path), "--", "npm", "install", "--", "-x"]
    )  # fmt: skip
    assert parsed["allow_host"] == ["a.example", "b.example"]
    assert parsed["verbose"] is True and parsed["no_network"] is False
    assert parsed["workdir"] == tmp_path
    assert parsed["command"] == ["npm", "install", "--", "-x"]
    assert fastrun.parse(["run", "--"])["command"] == []


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--help"],
        ["run", "-vh", "--", "true"],
        ["run", "--bogus", "--", "true"],
        ["run", "--workdir", "/no/such/folder", "--", "true"],
        ["run", "--policy"],
        ["run", "--verbose=yes", "--", "true"],
        ["run", "-5"],
        ["build", "-o"],
        ["runs", "list"],
    ],
)
def test_lines_typer_must_explain_are_left_to_it(args):
    assert fastrun.parse(args) is None


def typer_parse(name: str, args: list[str]):
    """What the Typer command makes of `args`: its parameters, or None for an error/help."""
    command = typer.main.get_command(build(name)).commands[name]
    try:
        ctx = command.make_context(name, list(args), resilient_parsing=False)
    except (click.exceptions.ClickException, click.exceptions.Exit):
        return None
    return ctx.params


def fast_as_typer(name: str, args: list[str]):
    found = fastrun.parse([name, *args])
    if found is None:
        return None
    out = {}
    for key, value in found.items():
        if isinstance(value, list):
            value = tuple(value) or (() if key != "command" else None)
        out[key] = value
    return out


TOKENS = ["--", "-", "ls", "-v", "-vv", "-la", "--no-network", "--env", "--env=A",
          "--policy", "--policy=", "strict", "-o", "-odist", "-vo", "--out=d", "-n", "--name=x",
          "-i", "--input", "--allow-host", "a.example", "--bogus", "-h", "x=1"]  # fmt: skip


@pytest.mark.parametrize("name", ["run", "build"])
def test_the_fast_parser_agrees_with_typer_on_every_line_it_accepts(name):
    """Run and build start their sandbox before Typer may load: both parsers must agree."""
    import itertools
    import random

    rng = random.Random(14)
    lines = [list(c) for n in range(4) for c in itertools.product(TOKENS[:8], repeat=n)]
    lines += [[rng.choice(TOKENS) for _ in range(rng.randint(1, 7))] for _ in range(1500)]
    accepted = 0
    for args in lines:
        fast = fast_as_typer(name, args)
        if fast is None:
            continue  # Typer explains it, after the lockdown
        accepted += 1
        slow = typer_parse(name, args)
        assert slow is not None, f"Typer refuses what the fast parser accepts: {args}"
        slow = {k: (v if v != () else None) for k, v in slow.items()}
        fast = {k: (v if v != () else None) for k, v in fast.items()}
        assert fast == slow, args
    assert accepted > 500


# Modules `krate run` must not load: the CLI framework and its output stack, the
# third-party store helper, and standard modules that cost milliseconds at import
# (dataclasses pulls in inspect, ast and dis; hashlib OpenSSL, where krate.sha is the
# builtin SHA-256; shutil bz2 and lzma; typing ~2 ms, imported for type checkers only, under
# `TYPE_CHECKING = False`). A run without network does not load the egress code at all.
# See ARCHITECTURE.md, "Start-up budget".
NOT_ON_THE_RUN_PATH = (
    "typer", "click", "rich", "sqlite_utils", "keyring", "dataclasses", "inspect", "asyncio",
    "tomllib", "difflib", "krate.egress", "krate.cli.app", "_hashlib", "shutil", "typing",
)  # fmt: skip


def test_the_fast_path_runs_without_importing_heavy_modules(tmp_path, krate_home):
    code = (
        "import sys; from krate.cli.main import main; "
        "code = main(['run', '--as-root', '--no-network', '--', 'sh', '-c', 'exit 3']); "
        f"print(code, *[m for m in {NOT_ON_THE_RUN_PATH!r} if m in sys.modules])"
    )
    for _ in range(2):  # the first run creates the store (migrations may load sqlite-utils)
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
        )
    assert done.stdout.split() == ["3"]


# A networked run loads the egress session, and still none of the above but krate.egress:
# its folder and files are made without tempfile and shutil (egress/scratch.py, ~3 ms).
NOT_ON_THE_NETWORKED_RUN_PATH = (
    *(m for m in NOT_ON_THE_RUN_PATH if m != "krate.egress"), "tempfile", "random",
)  # fmt: skip


def test_a_networked_run_loads_no_heavy_module_either(tmp_path, krate_home):
    code = (
        "import sys; from krate.cli.main import main; "
        "code = main(['run', '--as-root', '--allow-host', 'example.com', '--', 'sh', '-c', "
        "'test -n \"$HTTP_PROXY\" && exit 3']); "
        f"print(code, *[m for m in {NOT_ON_THE_NETWORKED_RUN_PATH!r} if m in sys.modules])"
    )
    for _ in range(2):  # the first run creates the store (migrations may load sqlite-utils)
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
        )
    assert done.stdout.split() == ["3"], done.stderr


def test_a_networked_run_waits_for_no_thread_to_start(tmp_path, krate_home):
    """`threading.Thread.start` blocks until the new thread ran (2-14 ms on busy CPUs): the
    proxy's reader and the sandbox's set-up (the bridge's DNS) start without that wait
    (helper_process.QuickThread), and the proxy is told to stop once the sandbox exited."""
    code = (
        "import sys, threading\n"
        "started = []\n"
        "real = threading.Thread.start\n"
        "threading.Thread.start = lambda t: (started.append(t.name), real(t))[1]\n"
        "from krate import egress\n"
        "stops = []\n"
        "stop = egress.EgressSession.stop\n"
        "egress.EgressSession.stop = lambda s: (stops.append(s.summary is None), stop(s))[1]\n"
        "from krate.cli.main import main\n"
        "code = main(['run', '--as-root', '--allow-host', 'example.com', '--', 'sh', '-c',"
        " 'test -n \"$HTTP_PROXY\" && exit 3'])\n"
        "print(code, stops, *started)\n"
    )
    for _ in range(2):  # the first run creates the store (migrations may load sqlite-utils)
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
        )
    assert done.stdout.split() == ["3", "[True]"], done.stderr


def test_the_program_loads_no_registry_code_on_its_way_out(tmp_path, krate_home):
    """As the program runs (argv from sys.argv: guard, lockdown, and the settling after the
    command): nothing started a registry transport, so nothing loads its module to end one."""
    code = (
        "import sys; sys.argv = ['krate', 'run', '--as-root', '--no-network', '--', 'true']; "
        "from krate.cli.main import main; code = main(); "
        f"print(code, *[m for m in {(*NOT_ON_THE_RUN_PATH, 'krate.registry')!r} "
        "if m in sys.modules])"
    )
    for _ in range(2):  # the first run creates the store (migrations may load sqlite-utils)
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
        )
    assert done.stdout.split() == ["0"], done.stderr


def test_the_bridge_starts_the_workload_with_only_c_modules_loaded(tmp_path):
    """The bridge sits before every networked workload: its start-up is kept minimal."""
    bridge = Path(krate.egress.__file__).with_name("bridge.py")
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(bridge), "--socket",
         str(tmp_path / "none"), "--http", "0", "--socks", "0", "--", "sh", "-c", "exit 4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert {"_socket", "_signal"} <= loaded
    assert not loaded & {"socket", "threading", "signal", "subprocess", "contextlib", "enum"}
    # not even os (stat, posixpath, _collections_abc: ~1.5 ms; posix is its C part)
    assert not loaded & {"os", "__future__", "posixpath", "_collections_abc"}


def test_a_proxy_that_never_starts_is_reported_with_its_own_error(tmp_path, krate_home):
    fake = tmp_path / "broken-python"
    fake.write_text("#!/bin/sh\necho 'proxy: cannot bind the socket' >&2\nexit 3\n")
    fake.chmod(0o755)
    paths = Paths(krate_home, krate_home)
    session = start_for_run(policy(tmp_path, "example.com"), "r1", paths, python=str(fake))
    session.process.wait(timeout=30)  # the sandbox would be running meanwhile
    session.close()
    assert session.recorder.ready_line is None and not session.stopped_early
    message = str(session.failure())
    assert message.startswith("the egress proxy did not start: proxy: cannot bind the socket")


def test_the_run_copies_the_bridges_fresh_bytecode_and_the_source_when_stale(tmp_path, krate_home):
    """Python compiles a script given as source on every start (~2.5 ms for the bridge, on
    the run's critical path): the run gives the bridge its bytecode, only when it matches."""
    import compileall
    import os

    from krate.egress import spawn

    compileall.compile_file(str(spawn.BRIDGE), quiet=1)
    assert spawn.fresh_bytecode(spawn.BRIDGE) is not None
    paths = Paths(krate_home, krate_home)
    session = start_for_run(policy(tmp_path, "example.com"), "r1", paths)
    try:
        session.configure()
        argv = session.wrap_argv(["true"])
        assert argv[3] == str(session.folder / "bridge.pyc"), argv
        assert not (session.folder / "bridge.py").exists()
        copied = (session.folder / "bridge.pyc").read_bytes()
        assert copied == spawn.fresh_bytecode(spawn.BRIDGE).read_bytes()
    finally:
        session.close()
    # A source newer than its bytecode (an edited checkout): the source, as before.
    source = tmp_path / "bridge.py"
    source.write_text("print('x')\n")
    compileall.compile_file(str(source), quiet=1)
    assert spawn.fresh_bytecode(source) is not None
    os.utime(source, (1, 1))
    assert spawn.fresh_bytecode(source) is None


def test_the_bridges_bytecode_runs_the_workload(tmp_path):
    """The copied bytecode is the bridge: it starts the workload and passes its status."""
    import compileall

    from krate.egress import spawn

    compileall.compile_file(str(spawn.BRIDGE), quiet=1)
    cached = spawn.fresh_bytecode(spawn.BRIDGE)
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(cached), "--socket", str(tmp_path / "none"),
         "--http", "0", "--socks", "0", "--", "sh", "-c", "exit 4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr


def test_the_explain_proxy_resolves_without_the_listener_or_the_relay(tmp_path):
    """`krate policy explain net` waits for the proxy's answer: in its one-shot explain mode
    the proxy imports only what decides and resolves (dial, wire), not what serves clients."""
    from krate.egress import compile_private, compile_rules, helperlib, spawn

    effective = policy(tmp_path, "localhost:9")
    line = {
        "rules": compile_rules(effective),
        "net_default": list(effective.net_default),
        "private_ok": compile_private(effective),
        "given": helperlib.given(),
        "listen": "none",
        "explain": {"host": "localhost", "port": 9},
    }
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(spawn.PROXY)],
        input=json.dumps(line) + "\n", capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    answers = [json.loads(raw) for raw in done.stdout.splitlines()]
    assert [a.get("type") for a in answers] == ["explain"], (done.stdout, done.stderr[-2000:])
    assert answers[0]["verdict"] == "allow", answers[0]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert {"krate.egress.dial", "krate.egress.wire"} <= loaded
    assert not loaded & {
        "krate.egress.handler", "krate.egress.listener", "krate.egress.names",
        "krate.egress.relay", "krate.egress.parsers",
    }  # fmt: skip


def explain_config(effective) -> dict:
    from krate.egress import compile_private, compile_rules, helperlib

    return {
        "rules": compile_rules(effective),
        "net_default": list(effective.net_default),
        "private_ok": compile_private(effective),
        "given": helperlib.given(),
        "listen": "none",
    }


def test_the_explain_proxy_imports_its_parts_before_the_policy_arrives(tmp_path):
    """resolve_early.py tells the proxy its modules at its start: it imports what decides
    and resolves while krate loads the policy, then answers as soon as the policy comes."""
    from krate.egress import helperlib, spawn

    proxy = subprocess.Popen(
        [sys.executable, "-I", "-S", "-X", "importtime", str(spawn.PROXY)], cwd="/",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proxy.stdin.write(json.dumps({"given": helperlib.given(), "explain": True}) + "\n")
    proxy.stdin.flush()
    import threading

    timer = threading.Timer(30, proxy.kill)  # a proxy waiting for the policy first: fails
    timer.daemon = True
    timer.start()
    seen = []
    while not any("krate.egress.dial" in line for line in seen):  # before the policy
        line = proxy.stderr.readline()
        assert line, ("".join(seen)[-2000:], proxy.poll())
        seen.append(line)
    timer.cancel()
    config = explain_config(policy(tmp_path, "localhost:9"))
    out, err = proxy.communicate(
        json.dumps({**config, "explain": {"host": "localhost", "port": 9}}) + "\n", timeout=60
    )
    answers = [json.loads(raw) for raw in out.splitlines()]
    assert [(a["type"], a["verdict"]) for a in answers] == [("explain", "allow")], err[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in [*seen, *err.splitlines()] if "|" in line}
    assert not loaded & {"krate.egress.handler", "krate.egress.listener", "krate.egress.relay"}


@pytest.mark.parametrize(
    ("allow", "private", "host", "port"),
    [
        (("localhost:9",), (), "localhost", 9),  # a rule naming loopback: allowed
        (("localhost.krate-test.invalid:9",), (), "localhost.krate-test.invalid", 9),
        (("127.0.0.1:9",), (), "127.0.0.1", 9),
        (("*:9",), (), "localhost", 9),  # loopback through a wildcard: refused
        (("*:9",), ("localhost",), "localhost", 9),  # ... unless private_ok names it
        (("example.com",), (), "other.example", 443),  # not allowed: no resolution
        ((), (), "999.1.1.1", 443),  # not a host at all
    ],
)
def test_explain_answers_the_same_with_its_modules_sent_first(tmp_path, allow, private, host, port):
    """explain's two lines (modules at the start, then policy and host) get the answer the
    proxy gives the whole configuration in one line: same decision, resolution and check."""
    from krate import resolve_early
    from krate.egress import spawn
    from krate.policy import Flags, effective_policy

    home = tmp_path / "home"
    home.mkdir()
    effective = effective_policy(
        workspace=tmp_path, home=home, user_policy_path=home / "no-policy.toml", trusted={},
        flags=Flags(policy="strict", allow_host=allow, allow_private_host=private),
    )  # fmt: skip
    config = explain_config(effective)
    one_line = subprocess.run(
        [sys.executable, "-I", "-S", str(spawn.PROXY)], cwd="/", capture_output=True, text=True,
        input=json.dumps({**config, "explain": {"host": host, "port": port}}) + "\n", timeout=60,
    )  # fmt: skip
    [expected] = [json.loads(raw) for raw in one_line.stdout.splitlines()]
    assert resolve_early.explain(config, host, port) == expected  # two lines, as the CLI sends
    forked = subprocess.run([sys.executable, "-c", FORKED, json.dumps([config, host, port])],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert json.loads(forked.stdout) == expected  # the resolver the CLI forks at entry


# The resolver `krate policy explain net` forks at entry (resolve_early.Forked), asked once.
FORKED = (
    "import json, sys\n"
    "from krate import resolve_early\n"
    "config, host, port = json.loads(sys.argv[1])\n"
    "resolve_early.fork_early()\n"
    "print(json.dumps(resolve_early.explain(config, host, port)))\n"
)
# The same, with the proxy's explain replaced by a report of where it runs.
FORKED_REPORTS = (
    "import json, os, signal\n"
    "from krate import resolve_early\n"
    "from krate.egress import dial\n"
    "dial.explain_once = lambda config, target: {'type': 'explain', 'env': dict(os.environ),\n"
    "    'cwd': os.getcwd(), 'fds': sorted(os.listdir('/proc/self/fd')),\n"
    "    'sigint': signal.getsignal(signal.SIGINT) == signal.SIG_IGN}\n"
    "extra = os.open('/dev/null', os.O_RDONLY)\n"
    "os.set_inheritable(extra, True)\n"
    "resolve_early.fork_early()\n"
    "print(json.dumps(resolve_early.explain({'rules': [], 'listen': 'none'}, 'x', 1)))\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="macOS asks the proxy")
def test_the_forked_resolver_runs_as_the_proxy_does(tmp_path):
    """Not krate's environment (a resolver reads LOCALDOMAIN, RES_OPTIONS, HOSTALIASES; a
    secret has no business there), not its folder, nor its descriptors or Ctrl-C."""
    env = dict(os.environ, NPM_TOKEN="s3cret", LOCALDOMAIN="corp.example")
    done = subprocess.run([sys.executable, "-c", FORKED_REPORTS], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    seen = json.loads(done.stdout)
    assert seen["env"] == {"PATH": os.defpath, "LC_ALL": "C.UTF-8"}  # the proxy's (spawn)
    assert seen["cwd"] == "/" and seen["sigint"] is True
    assert len(seen["fds"]) == 6, seen["fds"]  # 0-2 on /dev/null, its two pipes, listdir's


def test_explains_resolver_ends_before_krate_locks_down(tmp_path, krate_home):
    """The proof's own start-up analysis (netguard/startup.py) of a real explain: the forked
    resolver opened no third-party code and ended before krate locked down, whether it was
    asked (an allowed host) or not (a denied one)."""
    import shutil

    from krate.netguard import observer, startup

    from .conftest import KRATE

    strace = shutil.which("strace")
    if strace is None or not sys.platform.startswith("linux"):
        pytest.skip("needs strace and the Linux lockdown")
    package = str(Path(krate.egress.__file__).resolve().parent.parent)
    lines = (["localhost:9", "--allow-host", "localhost:9"], ["other.example"])
    for words in lines:
        log = tmp_path / "strace.log"
        argv = [KRATE, "policy", "explain", "net", *words]
        cmd = observer.wrap(argv, strace=strace, bwrap=None, log=str(log), trace=startup.TRACE)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("allow\t" if len(words) > 1 else "deny\t"), done.stdout
        seen = startup.analyse(log.read_text(), package)
        assert seen["locked_down"], words
        assert seen["outlived_lockdown"] == [], words
        assert seen["third_party_while_unlocked"] == [], words
        started = seen["children_before_lockdown"]
        assert started == ["a fork of krate"], (words, started)  # the resolver, not the proxy
        assert seen["helpers"] == [], words  # no proxy, and krate is not taken for one
