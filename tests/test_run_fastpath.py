"""`krate run`'s fast path (no Typer import) and the proxy started beside the sandbox."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

import krate.egress
from krate.cli import fastrun
from krate.cli.app import build
from krate.egress import start_for_run
from krate.paths import Paths

from .egress_support import policy


def test_fast_parser_knows_exactly_the_options_of_the_typer_command():
    command = typer.main.get_command(build("run")).commands["run"]
    typer_options = {opt for p in command.params for opt in p.opts if opt.startswith("-")}
    typer_options -= {"-h", "--help"}
    fast_options = {*fastrun.VALUES, *fastrun.REPEATED, *fastrun.FLAGS}
    assert fast_options == typer_options


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
        ["run", "--policy=strict", "--", "true"],
        ["run", "--bogus", "--", "true"],
        ["run", "ls", "-la"],
        ["run", "--workdir", "/no/such/folder", "--", "true"],
        ["run", "--policy"],
        ["runs", "list"],
    ],
)
def test_anything_unusual_goes_through_typer(args):
    assert fastrun.parse(args) is None


# Modules `krate run` must not load: the CLI framework and its output stack, the
# third-party store helper, and standard modules that cost milliseconds at import
# (dataclasses pulls in inspect, ast and dis). A run without network does not load
# the egress code at all. See ARCHITECTURE.md, "Start-up budget".
NOT_ON_THE_RUN_PATH = (
    "typer", "click", "rich", "sqlite_utils", "keyring", "dataclasses", "inspect", "asyncio",
    "tomllib", "difflib", "krate.egress", "krate.cli.app",
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
