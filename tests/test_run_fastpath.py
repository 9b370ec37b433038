"""`krate run`'s fast path (no Typer import) and the proxy started beside the sandbox."""

from __future__ import annotations

import json
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
