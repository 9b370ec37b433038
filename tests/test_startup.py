"""Start-up stays light: no heavy imports at CLI load, completion never touches the store."""

from __future__ import annotations

import os
import subprocess
import sys

from krate import __version__

from .conftest import AS_ROOT, run_krate

AS_ROOT_RUN = ("run", *AS_ROOT)

HEAVY = ("sqlite_utils", "keyring", "rich.table", "rich.console", "pydantic")


def test_loading_the_cli_imports_nothing_heavy():
    code = f"import sys, krate.cli.app; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_fast_path_imports_no_third_party_package():
    code = (
        "import sys; sys.argv = ['krate', '--version']; "
        "from krate.cli.main import main; main(); "
        "print(sorted(m for m in ('typer', 'rich', 'sqlite_utils', 'platformdirs') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [f"krate {__version__}", "[]"]


def test_tab_completion_never_opens_the_database(krate_home):
    krate_home.mkdir(mode=0o700)
    db = krate_home / "krate.db"
    db.write_bytes(b"not a database")  # opening it would fail loudly
    env = dict(
        os.environ, _KRATE_COMPLETE="complete_bash", COMP_WORDS="krate audit v", COMP_CWORD="2"
    )
    result = run_krate(env=env)
    assert result.returncode == 0, result.stderr
    assert "verify" in result.stdout
    assert db.read_bytes() == b"not a database"
    assert sorted(p.name for p in krate_home.iterdir()) == ["krate.db"]


def test_python_dash_m_krate_works():
    out = subprocess.run(
        [sys.executable, "-m", "krate", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("krate ")


def test_the_builtin_sha256_gives_hashlibs_digests():
    """krate.sha replaces hashlib (OpenSSL) on the start-up path: the digests are the chain's."""
    import hashlib

    from krate import sha

    for data in (b"", b"abc", bytes(range(256)) * 1000, "é\n".encode()):
        assert sha.hexdigest(data) == hashlib.sha256(data).hexdigest()
    assert sha.sha256.__module__ in ("_sha2", "_sha256")  # not OpenSSL's


def test_which_finds_what_shutil_which_finds(tmp_path):
    import shutil

    from krate.sandbox.detect import which

    (tmp_path / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "tool").chmod(0o755)
    (tmp_path / "plain").write_text("")
    (tmp_path / "folder").mkdir(mode=0o755)
    path = f"/nonexistent:{tmp_path}:/usr/bin:/bin"
    for name in ("tool", "plain", "folder", "sh", "no-such-tool"):
        assert which(name, path) == shutil.which(name, path=path), name
    assert which("sh", "") is None


def test_the_quick_exit_runs_exit_handlers_flushes_and_joins_threads(tmp_path):
    """cli.main._exit skips the module teardown only: nothing a normal exit does is lost."""
    code = (
        "import atexit, sys, threading, time\n"
        "from krate.cli.main import _exit\n"
        "atexit.register(lambda: sys.stdout.write('handler ran\\n'))\n"
        "if sys.argv[1] == 'thread':\n"
        "    threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "sys.stdout.write('buffered output')\n"
        "_exit(7)\n"
    )
    for mode, expected in (("plain", "buffered outputhandler ran\n"),
                           ("thread", "buffered outputthread done\nhandler ran\n")):  # fmt: skip
        out = tmp_path / f"{mode}.txt"
        with open(out, "w") as fh:  # a file: stdout is block-buffered
            done = subprocess.run([sys.executable, "-c", code, mode], stdout=fh, timeout=60)
        assert done.returncode == 7
        assert out.read_text() == expected


# What no light command may load (issue 19, ARCHITECTURE.md "Start-up budget"): the help
# renderer's stack, the store's third-party helper (a current store needs no migration),
# the keychain, pydantic, asyncio, OpenSSL's hashlib (krate.sha is the builtin SHA-256), and
# the export's zip writer (`data where` reads names of privacy/export.py).
HEAVY_FOR_COMMANDS = ("rich", "markdown_it", "pygments", "sqlite_utils", "keyring", "pydantic",
                      "asyncio", "_hashlib", "zipfile")  # fmt: skip
LIGHT_COMMANDS = (
    ["info"], ["info", "--json"], ["runs", "list"], ["runs", "show", "last"], ["builds", "list"],
    ["artifacts", "list"], ["policy", "list"], ["policy", "show"],
    ["policy", "explain", "net", "registry.npmjs.org"], ["audit", "head"], ["audit", "list"],
    ["audit", "network"], ["data", "where"], ["image", "list"],
)  # fmt: skip
# The lines cli/fastread.py parses load no CLI framework (Typer alone is ~5x `python -c
# pass`), and the read side of runs (runs_read.py) without the launch's modules.
FAST_COMMANDS = [args for args in LIGHT_COMMANDS if args[:2] != ["policy", "explain"]]
HEAVY_FOR_FAST = ("typer", "click", "krate.runs", "krate.run_prepare", "krate.egress",
                  "krate.sandbox.spec", "krate.registry.keychain",
                  "krate.images.blobs")  # fmt: skip
# The record's everyday readers load no dataclasses (inspect, ast, dis: ~5 ms) either.
RECORD_READERS = (["info"], ["runs", "list"], ["runs", "show", "last"], ["audit", "head"],
                  ["audit", "list"], ["data", "where"], ["image", "list"])  # fmt: skip
LOADED = (
    "import contextlib, io, os, sys; from krate.cli.main import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    code = main(sys.argv[2:], protect=True)\n"
    "print(code, *[m for m in sys.argv[1].split(',') if m in sys.modules])\n"
)


def loaded(args: list[str], heavy, env=None, cwd=None) -> list[str]:
    """The exit code and the modules of `heavy` that `krate ARGS` loaded, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", LOADED, ",".join(heavy), *args], env=env,
                          cwd=cwd, capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.split()


def test_light_commands_load_no_heavy_module(tmp_path, krate_home):
    work = tmp_path / "work"
    work.mkdir()
    run_krate(*AS_ROOT_RUN, "--no-network", "--", "true", cwd=work)  # a store with one run
    for args in LIGHT_COMMANDS:
        assert loaded(args, HEAVY_FOR_COMMANDS, cwd=work) == ["0"], args
    # The export's temporary file (tempfile, random) too: `runs show` has it from egress/.
    assert loaded(["data", "where"], ("tempfile", "random"), cwd=work) == ["0"]


def test_light_read_commands_load_no_cli_framework_and_no_launch_path(tmp_path, krate_home):
    work = tmp_path / "work"
    work.mkdir()
    run_krate(*AS_ROOT_RUN, "--no-network", "--", "true", cwd=work)  # a store with one run
    for args in FAST_COMMANDS:
        assert loaded(args, HEAVY_FOR_FAST, cwd=work) == ["0"], args
    for args in RECORD_READERS:
        assert loaded(args, ("dataclasses", "inspect"), cwd=work) == ["0"], args
    # explain net compiles the rules as the egress proxy takes them (krate.egress).
    explain = ["policy", "explain", "net", "registry.npmjs.org"]
    assert loaded(explain, ("typer", "click", "krate.runs"), cwd=work) == ["0"]


def test_help_off_a_terminal_loads_no_cli_framework(krate_home):
    """`krate [COMMAND...] --help` on a pipe is printed from cli/help_table.py: no Typer,
    Click or rich, no command's module, not even pathlib (no store, no deletions settled)."""
    from krate.cli.help_table import HELP

    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    heavy = ("typer", "click", "rich", "krate.cli.app", "krate.cli.fastrun",
             "krate.resolve_early", "pathlib", "sqlite3")  # fmt: skip
    for words in HELP:
        flag = "-h" if len(words) % 2 else "--help"
        assert loaded([*words, flag], heavy, env=env) == ["0"], words


def test_a_tab_press_loads_neither_typer_nor_the_store(krate_home):
    env = dict(os.environ, _KRATE_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="krate audit v")
    heavy = ("typer", "rich", "sqlite3", "pathlib", "krate.store", "krate.policy", "ctypes")
    assert loaded([], heavy, env=env) == ["0"]


GC_STATE = (
    "import contextlib, gc, io, sys; from krate.cli.main import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    code = main(sys.argv[1:], protect=True)\n"
    "print(code, gc.isenabled(), gc.get_freeze_count() > 0)\n"
)


def test_the_collector_is_off_only_while_krate_starts(tmp_path, krate_home):
    """Start-up runs without the cycle collector (~5% of a command); the command runs with it.

    A long run, export or proof must collect its garbage: the collector is on again (and
    what start-up made frozen, never walked again) once the command or workload starts.
    """
    work = tmp_path / "work"
    work.mkdir()
    for args in (["info"], ["audit", "head"], [*AS_ROOT_RUN, "--no-network", "--", "true"]):
        done = subprocess.run([sys.executable, "-c", GC_STATE, *args], cwd=work,
                              capture_output=True, text=True, check=True)  # fmt: skip
        assert done.stdout.split() == ["0", "True", "True"], (args, done.stderr)


def test_the_registry_transport_starts_before_krate_loads_its_client():
    """`image pull`/`login`/`push`: the transport's interpreter starts with only subprocess
    loaded (registry/early.py), so its start overlaps krate's; the command takes it over."""
    code = (
        "import json, sys\n"
        "from krate.cli import common, main\n"
        "main._protect(sys.argv[1:])\n"
        "loaded = [m for m in ('krate.registry.client', 'dataclasses', 'typer')"
        " if m in sys.modules]\n"
        "started = common.take_transport()\n"
        "print(json.dumps([loaded, type(started).__name__, started.proc.poll()]))\n"
        "started.abandon()\n"
    )
    for args in (["image", "pull", "ghcr.io/me/tools:1"], ["login", "ghcr.io"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == '[[], "Transport", null]', (args, done.stderr)


def test_the_registry_transport_is_spawned_before_krate_loads_its_paths():
    """The transport's start (its interpreter and imports: some 30 ms) is on the critical
    path of every pull; krate spawns it before loading even its paths module (pathlib),
    and without subprocess (about 9 ms with what it imports: registry/early.py)."""
    code = (
        "import json, sys\n"
        "seen = []\n"
        "def hook(event, args):\n"
        "    if event == 'os.fork' and not seen:\n"
        "        seen.append([m for m in ('krate.paths', 'pathlib', 'subprocess')"
        " if m in sys.modules])\n"
        "sys.addaudithook(hook)\n"
        "from krate.cli import main\n"
        "main._protect(sys.argv[1:])\n"
        "from krate.cli import common\n"
        "common.take_transport().abandon()\n"
        "print(json.dumps(seen))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "image", "pull", "localhost:5000/me/app:1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "[[]]", done.stderr
