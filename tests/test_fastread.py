"""The light read-only commands' parser without Typer (cli/fastread.py) stays Typer's twin.

Its tables must hold exactly the options of the Typer commands; every line it accepts
must print what Typer's route prints, byte for byte (errors included); every line it
is unsure of (help, unknown options, bad values) must be left to Typer.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from krate.cli import fastread

from .conftest import AS_ROOT, run_krate


def typer_command(words: tuple[str, ...]):
    import typer.main

    from krate.cli.app import build

    command = typer.main.get_command(build(words[0]))
    for word in words:
        command = command.commands[word]
    assert not hasattr(command, "commands"), words  # a command, not a group
    return command


@pytest.mark.parametrize("words", sorted(fastread.COMMANDS))
def test_the_tables_hold_exactly_the_typer_commands_options(words):
    flags, values, positional, defaults, body = fastread.COMMANDS[words]
    command = typer_command(words)
    want_flags, want_values, want_args, want_defaults = {}, {}, [], {}
    for param in command.params:
        assert not getattr(param, "envvar", None), param.name  # no value from the environment
        if param.param_type_name == "argument":
            want_args.append(param.name)
            continue
        names = [o for o in (*param.opts, *param.secondary_opts) if o not in ("-h", "--help")]
        if set(names) <= set(fastread.TYPER_ONLY.get(words, ())):
            continue  # left to Typer (below)
        if param.is_flag:
            assert param.default is False, param.name
            want_flags.update({name: param.name for name in names})
            continue
        assert param.nargs == 1, param.name
        if param.multiple:
            assert type(param.type).__name__ == "StringParamType", param.name
            kind = fastread.MANY
        elif type(param.type).__name__ == "IntRange":
            assert param.type.max is None and not param.type.min_open, param.name
            kind = param.type.min
        else:
            assert type(param.type).__name__ == "StringParamType", param.name
            kind = None
        want_values.update({name: (param.name, kind) for name in names})
        if param.default is not None:
            want_defaults[param.name] = param.default
    assert flags == want_flags
    assert values == want_values
    assert list(positional) == want_args
    assert defaults == want_defaults
    from krate.cli import views

    assert callable(getattr(views, body))


@pytest.mark.parametrize(
    "args",
    [
        ["info", "--help"], ["info", "-h"], ["info", "--bogus"], ["info", "--json=1"],
        ["info", "extra"], ["audit", "head", "--"], ["audit", "--json", "head"],
        ["audit", "list", "--limit"], ["audit", "list", "--limit", "-1"],
        ["audit", "list", "--limit=x"], ["audit", "list", "--limit", "1_0"],
        ["audit", "list", "--limit", "٣"], ["audit", "list", "--kind", "--json"],
        ["runs", "list", "--limit", "0"], ["runs", "show"], ["runs", "show", "a", "b"],
        ["runs", "show", "-"], ["runs", "show", "--", "last"], ["runs", "bogus"],
        ["data", "export"], ["image", "show", "x"], ["audit"], [], ["--json", "info"],
        ["policy", "show", "--allow-host"], ["policy", "show", "--env", "-x"],
        ["policy", "show", "--no-network=1"], ["policy", "show", "strict"],
        ["audit", "network", "--prove"], ["audit", "network", "--json", "--prove"],
        ["policy", "explain", "net"], ["policy", "explain", "net", "-x"],
        ["policy", "explain", "net", "a", "b"], ["policy", "explain", "--help"],
        ["image", "pull"], ["image", "pull", "--help"], ["image", "pull", "a/b:1", "-h"],
        ["image", "pull", "a/b:1", "c/d:1"], ["image", "pull", "a/b:1", "--platform"],
        ["image", "pull", "-qh", "a/b:1"], ["image", "pull", "--quiet=1", "a/b:1"],
    ],
)  # fmt: skip
def test_lines_typer_must_explain_are_left_to_it(args):
    assert fastread.parse(args) is None


def test_common_forms_are_parsed_like_click():
    assert fastread.parse(["audit", "list", "--limit=5", "--kind", "run.", "--json"]) == (
        "audit_list",
        {"json_": True, "jsonl": False, "since": None, "until": None, "kind": "run.",
         "run": None, "limit": 5},
    )  # fmt: skip
    assert fastread.parse(["runs", "show", "--json", "last"]) == (
        "runs_show",
        {"json_": True, "run": "last"},
    )
    assert fastread.parse(["runs", "list"]) == ("runs_list", {"json_": False, "limit": 20})
    assert fastread.parse(["image", "pull", "-q", "--platform=linux/arm64", "r.example/a:1"]) == (
        "image_pull",
        {"json_": False, "plain_http": False, "quiet": True, "platform": "linux/arm64",
         "ref": "r.example/a:1"},
    )  # fmt: skip
    assert fastread.parse(
        ["policy", "show", "--allow-host", "a", "--env=X", "--allow-host=b", "--no-network"]
    ) == (
        "policy_show_options",
        {"json_": False, "no_network": True, "policy": None, "allow_host": ["a", "b"],
         "allow_private_host": None, "allow_write": None, "deny_read": None, "env": ["X"]},
    )  # fmt: skip
    # The last of a repeated option wins, as in click; an empty value is a value.
    assert (
        fastread.parse(["audit", "list", "--kind", "a", "--kind=", "--limit", "0"])[1]["kind"] == ""
    )


@pytest.fixture
def store(tmp_path, krate_home):
    """A store with a run (its events and decisions) and a note."""
    work = tmp_path / "work"
    work.mkdir()
    done = run_krate("run", *AS_ROOT, "--no-network", "--", "true", cwd=work)
    assert done.returncode == 0, done.stderr
    assert run_krate("audit", "note", "hello").returncode == 0
    listed = run_krate("runs", "list", "--json")
    return listed.stdout.split('"id": "')[1][:16]


def both_routes(cli, monkeypatch, args: list[str]):
    """(fast, typer) results of `krate ARGS` in-process: the fast parser on, then off."""
    assert fastread.parse(args) is not None, args
    fast = cli(*args)
    with monkeypatch.context() as patched:
        patched.setattr(fastread, "parse", lambda args: None)
        slow = cli(*args)
    return fast, slow


def test_every_accepted_line_prints_what_typer_prints(cli, monkeypatch, store, tmp_path):
    run_id = store
    monkeypatch.chdir(tmp_path / "work")
    lines = [
        ["info"], ["info", "--json"], ["audit", "head"], ["audit", "head", "--json"],
        ["audit", "list"], ["audit", "list", "--limit", "2"],
        ["audit", "list", "--limit=1", "--json"],
        ["audit", "list", "--jsonl", "--kind", "run."], ["audit", "list", "--run", run_id],
        ["audit", "list", "--since", "1h", "--until", "2099-01-01"],
        ["audit", "list", "--limit", "0"],
        ["audit", "list", "--since", "bogus"], ["audit", "list", "--json", "--jsonl"],
        ["runs", "list"], ["runs", "list", "--limit", "1", "--json"], ["runs", "show", "last"],
        ["runs", "show", "--json", "last"], ["runs", "show", run_id[:6]], ["runs", "show", "nope"],
        ["data", "where"], ["data", "where", "--json"],
        ["image", "list"], ["image", "list", "--json"],
        ["policy", "show"], ["policy", "show", "--json"], ["policy", "show", "--policy", "nope"],
        ["policy", "list"], ["policy", "list", "--json"], ["audit", "network"],
        ["audit", "network", "--json"], ["builds", "list"], ["builds", "list", "--limit", "1"],
        ["artifacts", "list", "--json", "--limit=0"], ["artifacts", "list"],
        ["policy", "explain", "net", "registry.npmjs.org", "--no-resolve"],
        ["policy", "explain", "--json", "net", "evil.example", "--no-resolve"],
        ["policy", "explain", "read", "~/.ssh/id_rsa"], ["policy", "explain", "env", "NPM_TOKEN"],
        ["policy", "explain", "write", "/tmp/x", "--allow-write", "/tmp", "--policy", "strict"],
        ["policy", "explain", "bogus", "x"], ["policy", "explain", "net", "a b", "--no-resolve"],
        ["image", "pull", "Bad Ref!"], ["image", "pull", "-q", "r.example/a:1", "--platform", "x"],
        ["policy", "show", "--policy", "strict", "--allow-host", "a.example",
         "--allow-host=b.example:8443", "--no-network"],
        ["policy", "show", "--deny-read", "~/notes", "--env", "NPM_TOKEN", "--allow-write",
         "/tmp/x", "--allow-private-host", "npm.corp.example", "--allow-host", "npm.corp.example"],
    ]  # fmt: skip
    for args in lines:
        fast, slow = both_routes(cli, monkeypatch, args)
        assert (fast.code, fast.out, fast.err) == (slow.code, slow.out, slow.err), args
        assert fast.out or fast.err, args
    failed = both_routes(cli, monkeypatch, ["runs", "show", "nope"])[0]
    assert failed.code != 0 and failed.err.startswith("krate: ")


def test_a_fast_line_never_imports_typer_and_still_locks_down(tmp_path, store):
    """The fast route runs after the guard and the lockdown, exactly as Typer's route."""
    code = (
        "import contextlib, io, sys; from krate.cli.main import main\n"
        "from krate.netguard import guard, lockdown\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    code = main(sys.argv[1:], protect=True)\n"
        "seccomp = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')]\n"
        "print(code, 'typer' in sys.modules, guard.installed(), lockdown.state()['applied_here'],"
        " seccomp)\n"
    )
    for args in (["info"], ["audit", "head"], ["runs", "show", "last"], ["data", "where"]):
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True)  # fmt: skip
        assert done.stdout.split() == ["0", "False", "True", "True", "['2']"], (args, done.stderr)
