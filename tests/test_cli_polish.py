"""The CLI as a whole: help with examples, --json for records, one-line errors, no colour off a TTY.

The command tree is walked from the real app (typer.main.get_command), so a command
added later is held to the same rules without editing this file.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

import pytest
import typer

from krate.cli.app import app
from tests.conftest import KRATE, as_root, run_krate

ROOT_COMMAND = typer.main.get_command(app)
TYPER_OWN = {"--install-completion", "--show-completion", "--help"}
# Commands that show no list or record, so no --json: why, for each.
NO_JSON = {
    "krate run": "passes the workload's own stdout through untouched",
    "krate build": "passes the build's own stdout through untouched",
    "krate audit note": "prints only the new event's seq",
    "krate policy check": "prints FILE:LINE: message diagnostics, like a compiler",
    "krate policy init": "writes a template file",
    "krate policy allow": "changes a file; `krate policy show --json` shows the result",
    "krate policy edit": "opens an editor; `krate policy show --json` shows the result",
    "krate policy trust": "changes trust; `krate policy list --json` shows it",
    "krate policy untrust": "changes trust; `krate policy list --json` shows it",
    "krate artifacts export": "writes a file",
    "krate login": "stores credentials; prints nothing on success",
    "krate logout": "removes credentials",
    "krate push": "prints only the manifest digest",
}
COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


def commands(cmd=ROOT_COMMAND, path=("krate",)):
    yield " ".join(path), cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from commands(sub, (*path, name))


ALL = dict(commands())
LEAVES = {path: cmd for path, cmd in ALL.items() if not hasattr(cmd, "commands")}


def examples(cmd) -> list[str]:
    return [
        line.split("Example:", 1)[1].strip()
        for line in (cmd.help or "").splitlines()
        if "Example:" in line
    ]


@pytest.mark.parametrize("path", sorted(ALL))
def test_every_command_has_help_and_an_example_of_itself(path):
    cmd = ALL[path]
    assert (cmd.help or "").strip(), f"{path} has no help text"
    shown = examples(cmd)
    assert shown, f"{path}: help has no `Example:` line"
    assert any(path in example for example in shown), f"{path}: no example runs `{path}`"


@pytest.mark.parametrize("path", sorted(ALL))
def test_every_option_has_help_and_is_shown_in_an_example(path):
    cmd = ALL[path]
    used = " ".join(examples(cmd))
    for param in cmd.params:
        if set(param.opts) & TYPER_OWN:
            continue
        text = getattr(param, "help", None) or ""
        assert text.strip(), f"{path}: {param.name} has no help text"
        if param.param_type_name != "option":
            continue
        in_use = any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", used) for o in param.opts)
        assert in_use or "Example:" in text, (
            f"{path} {param.opts[0]}: add `Example: ...` to its help or use it in the "
            "command's example"
        )


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_json_wherever_a_list_or_record_is_shown(path):
    has_json = any("--json" in p.opts for p in LEAVES[path].params)
    if path in NO_JSON:
        assert not has_json, f"{path} now has --json: remove it from NO_JSON"
    else:
        assert has_json, f"{path} shows a list or record but has no --json"


def one_line_error(result, code: int) -> str:
    """The command failed with `code`, printing exactly one `krate: ...` line and no traceback."""
    assert "Traceback" not in result.err, result.err
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"not one line: {result.err!r}"
    assert lines[0].startswith("krate: "), lines[0]
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_unknown_option_is_a_one_line_usage_error(cli, path):
    words = path.split()[1:]
    line = one_line_error(cli(*words, "--no-such-option"), 2)
    assert "No such option: --no-such-option" in line
    assert f"(see `{path} --help`)" in line


@pytest.mark.parametrize(
    "path", sorted(p for p, c in LEAVES.items() if any(x.required for x in c.params))
)
def test_missing_argument_is_a_one_line_usage_error(cli, path):
    line = one_line_error(cli(*path.split()[1:]), 2)
    assert "Missing" in line


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["audit", "show", "999"], 1, "no event 999"),
        (["audit", "show", "abc"], 2, "'abc' is not a valid int"),
        (["audit", "list", "--since", "tomorrowish"], 2, "invalid --since"),
        (["runs", "show", "no-such-run"], 1, "no run 'no-such-run'"),
        (["runs", "show", "last"], 1, "no runs yet"),
        (["builds", "show", "no-such-build"], 1, "no build"),
        (["artifacts", "show", "sha256:0000"], 1, "no artifact"),
        (["artifacts", "export", "nosuch", "--out", "x"], 1, "no artifact"),
        (["provenance", "dist/nothing.tar.gz"], 1, "no artifact"),
        (["push", "dist/nothing.tar.gz", "127.0.0.1:5999/me/x:1"], 1, "no artifact"),
        (["policy", "show", "--policy", "no-such-policy"], 2, "neither a built-in profile"),
        (["policy", "explain", "blah", "thing"], 2, "unknown kind"),
        (["policy", "trust", "/nonexistent/krate.toml"], 1, "no such file"),
        (["data", "restore"], 1, "nothing to restore"),
        (["data", "export", "--out", "/nonexistent/dir/x.zip"], 2, "does not exist"),
        (["data", "prune", "--older-than", "banana", "--yes"], 2, "invalid --older-than"),
        (["run"], 2, "give the command to run after `--`"),
        (["build", "--out", "dist"], 2, "give the build command after `--`"),
    ],
)
def test_bad_invocations_say_what_to_do_in_one_line(cli, args, code, says):
    assert says in one_line_error(cli(*args), code)


def test_policy_check_reports_a_missing_file_as_a_diagnostic(cli, tmp_path):
    """`policy check` prints FILE: message lines (its documented format), never a traceback."""
    result = cli("policy", "check", str(tmp_path / "missing.toml"))
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.strip() == f"{tmp_path / 'missing.toml'}: no such file"


def test_unreadable_files_are_one_line_errors(ordinary_user, user_tmp):
    if ordinary_user is None:
        pytest.skip("needs root to create an unreadable file for an ordinary user")
    secret = user_tmp / "secret.toml"
    secret.write_text('profile = "strict"\n')
    os.chown(secret, 0, 0)
    secret.chmod(0o600)
    env = dict(os.environ, KRATE_HOME=str(user_tmp / "home"))
    for args, code, says in (
        (["policy", "check", str(secret)], 2, "is not readable"),
        (["policy", "trust", str(secret)], 2, "is not readable"),
        (["policy", "show", "--policy", str(secret)], 1, "cannot read: Permission denied"),
        (["run", "--policy", str(secret), "--", "true"], 125, "cannot read: Permission denied"),
    ):
        done = run_krate(*args, env=env, user=ordinary_user, cwd=user_tmp)
        line = one_line_error(_Result(done), code)
        assert says in line, line


class _Result:
    def __init__(self, done: subprocess.CompletedProcess) -> None:
        self.code, self.out, self.err = done.returncode, done.stdout, done.stderr


def test_export_into_an_unwritable_folder_is_a_one_line_error(ordinary_user, user_tmp):
    if ordinary_user is None:
        pytest.skip("needs root")
    locked = user_tmp / "locked"
    locked.mkdir()
    os.chown(locked, 0, 0)
    locked.chmod(0o555)
    env = dict(os.environ, KRATE_HOME=str(user_tmp / "home"))
    done = run_krate("data", "export", "--out", str(locked / "x.zip"), env=env, user=ordinary_user)
    line = one_line_error(_Result(done), 1)
    assert str(locked) in line and "permission denied" in line
    assert list(locked.iterdir()) == []


def test_data_folder_inside_a_closed_folder_is_a_one_line_error(ordinary_user, tmp_path):
    if ordinary_user is None:
        pytest.skip("needs root")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    env = dict(os.environ, KRATE_HOME=str(closed / "home"))
    done = run_krate("audit", "list", env=env, user=ordinary_user)
    line = one_line_error(_Result(done), 1)
    assert str(closed) in line and "permission denied" in line


def test_a_data_folder_that_is_a_file_is_a_one_line_error(cli, krate_home):
    krate_home.write_text("oops")
    line = one_line_error(cli("audit", "note", "x"), 1)
    assert "not a folder" in line


# ---------------------------------------------------------------- colour


def on_a_terminal(*args: str, env: dict) -> str:
    """Run the real krate with its stdout and stderr on a pseudo-terminal; what it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([KRATE, *args], stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture
def terminal_env(krate_home):
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(TERM="xterm-256color", COLUMNS="100")
    assert run_krate("audit", "note", "colour test").returncode == 0
    return env


@pytest.mark.parametrize("args", [["--help"], ["audit", "list"], ["audit", "list", "--help"]])
def test_colour_only_on_a_terminal_and_never_with_no_color(terminal_env, args):
    coloured = on_a_terminal(*args, env=terminal_env)
    plain = on_a_terminal(*args, env=dict(terminal_env, NO_COLOR="1"))
    piped = subprocess.run([KRATE, *args], env=terminal_env, capture_output=True, text=True)
    if args != ["audit", "list"]:  # rich tables are plain by design; help is coloured
        assert COLOUR.search(coloured), "expected colour on a terminal (else this test is void)"
    assert not COLOUR.search(plain), f"colour despite NO_COLOR: {plain[:300]!r}"
    assert "\x1b[" not in piped.stdout + piped.stderr, "escape codes on a pipe"
    assert "colour test" in piped.stdout or "Usage" in piped.stdout


def test_json_output_is_never_coloured_even_on_a_terminal(terminal_env):
    out = on_a_terminal("audit", "list", "--json", env=dict(terminal_env, FORCE_COLOR="1"))
    assert "\x1b[" not in out
    assert '"colour test"' in out


@pytest.mark.parametrize(
    "args",
    [["runs", "list"], ["audit", "list"], ["policy", "list"], ["--help"], ["policy", "--help"]],
)
def test_no_color_means_no_escape_code_at_all_not_even_bold(terminal_env, tmp_path, args):
    ran = run_krate(*as_root(["run", "--", "true"]), env=terminal_env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    styled = on_a_terminal(*args, env=terminal_env)
    assert "\x1b[" in styled, "expected styles on a terminal (else this test is void)"
    plain = on_a_terminal(*args, env=dict(terminal_env, NO_COLOR="1", COLUMNS="120"))
    assert "\x1b" not in plain, f"escape code despite NO_COLOR: {plain[:300]!r}"
    assert ("Usage" in plain) if "--help" in args else ("\r\n" in plain)


@pytest.mark.parametrize(
    ("args", "suggested"),
    [
        (["run", "--bogus", "--", "true"], None),  # click suggested --verbose
        (["runs", "list", "--bogus"], None),
        (["run", "--verbos", "--", "true"], "--verbose"),
        (["policy", "show", "--alow-host", "x"], "--allow-host"),  # not --allow-write
        (["runs", "list", "--jsn"], "--json"),
    ],
)
def test_an_unknown_option_suggests_only_close_matches(args, suggested):
    done = run_krate(*args)
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"krate: No such option: {args[1] if args[0] == 'run' else args[2]}")
    if suggested is None:
        assert "Possible" not in line and "--verbose" not in line, line
    else:
        assert f"(Possible options: {suggested})" in line, line


# ---------------------------------------------------------------- help off a terminal

BOX = str.maketrans("", "", "╭╮╰╯─│")


def words(text: str) -> list[str]:
    return text.translate(BOX).split()


@pytest.mark.parametrize("path", sorted(ALL))
def test_plain_help_says_exactly_what_rich_help_says(path):
    """Off a terminal help skips rich (cli/plainhelp.py): the same words, in the same order."""
    import contextlib
    import io

    from typer import rich_utils

    from krate.cli import plainhelp

    ctx = ROOT_COMMAND.make_context("krate", [], resilient_parsing=True)
    cmd = ROOT_COMMAND
    for name in path.split()[1:]:
        cmd = cmd.get_command(ctx, name)
        ctx = cmd.make_context(name, [], parent=ctx, resilient_parsing=True)
    rich = io.StringIO()
    with contextlib.redirect_stdout(rich):
        rich_utils.rich_format_help(obj=cmd, ctx=ctx, markup_mode="rich")
    plain = plainhelp.render(cmd, ctx)
    assert plain is not None, "plainhelp leaves this command to rich: teach it, or say why"
    assert words(plain) == words(rich.getvalue())
    assert all(len(line) <= plainhelp.WIDTH for line in plain.splitlines())


def test_help_on_a_pipe_loads_no_rich_and_matches_the_terminals(terminal_env):
    code = "import sys; from krate.cli.main import main; main(['--help']); print(*sys.modules)"
    env = {k: v for k, v in terminal_env.items() if k != "FORCE_COLOR"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    piped, _, modules = done.stdout.rstrip("\n").rpartition("\n")
    assert "rich" not in modules.split()
    # Nor any command's module: the list comes from the generated table (cli/app.py).
    commands = ("krate.cli.run", "krate.cli.runs", "krate.cli.audit", "krate.cli.policy",
                "krate.cli.data", "krate.cli.info", "krate.cli.doctor")  # fmt: skip
    assert not set(commands) & set(modules.split())
    on_terminal = re.sub(r"\x1b\[[0-9;]*m", "", on_a_terminal("--help", env=env))
    assert "╭" in on_terminal  # rich on the terminal
    assert words(piped) == words(on_terminal)


# ---------------------------------------------------------------- help from the table

HELP_PATHS = sorted(ALL)


def test_the_help_table_is_what_typer_prints_off_a_terminal():
    """cli/help_table.py is generated from Typer's own route: a changed help text, option
    or command fails here until it is regenerated."""
    from krate.cli import help_table, quickcomplete

    hint = "run: .venv/bin/python -m krate.cli.quickcomplete --write && ruff format src"
    texts = quickcomplete.help_texts()
    assert sorted(" ".join(("krate", *words)) for words in texts) == HELP_PATHS, hint
    for words, text in texts.items():
        assert help_table.HELP.get(words) == text, f"krate {' '.join(words)}: {hint}"


def test_help_on_a_pipe_is_typers_for_every_command_and_both_flags(krate_home):
    """The real krate, piped: byte for byte the help Typer's route prints, exit 0."""
    from krate.cli.help_table import HELP

    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    for path in HELP_PATHS:
        words = path.split()[1:]
        for flag in ("--help", "-h"):
            done = run_krate(*words, flag, env=env)
            assert (done.returncode, done.stderr) == (0, ""), (path, flag)
            assert done.stdout == HELP[tuple(words)], (path, flag)
    wide = run_krate("policy", "explain", "--help", env=dict(env, COLUMNS="300"))
    assert wide.stdout == HELP[("policy", "explain")]


# krate's own entry with the table's route switched off: Typer's route, errors included.
TYPER_HELP = (
    "import sys; from krate.cli import main, quickhelp; quickhelp.text = lambda args: None; "
    "sys.exit(main.main(sys.argv[1:]))"
)


@pytest.mark.parametrize(
    "extra",
    [{"COLUMNS": "40"}, {"COLUMNS": "x"}, {"FORCE_COLOR": "1"}],
    ids=["narrow", "bad-columns", "force-color"],
)
def test_help_the_table_cannot_answer_goes_to_typer(krate_home, extra):
    """A narrow COLUMNS wraps Click's usage line, FORCE_COLOR asks for rich: Typer's."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    env.update(extra)
    args = ["policy", "explain", "--help"]
    done = run_krate(*args, env=env)
    typer_route = subprocess.run([sys.executable, "-c", TYPER_HELP, *args], env=env,
                                 capture_output=True, text=True, check=True)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, typer_route.stdout)
    if extra == {"COLUMNS": "40"}:  # else this test is void: the narrow help differs
        from krate.cli.help_table import HELP

        assert done.stdout != HELP[tuple(args[:-1])]


@pytest.mark.parametrize(
    "args",
    [["info", "--json", "--help"], ["audit", "list", "--help", "--help"], ["--version", "--help"],
     ["nosuch", "--help"], ["audit list", "--help"]],
)  # fmt: skip
def test_only_a_bare_help_line_is_answered_from_the_table(krate_home, args):
    """Any other line ending in --help is Typer's, as before."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    done = run_krate(*args, env=env)
    typer_route = subprocess.run([sys.executable, "-c", TYPER_HELP, *args], env=env,
                                 capture_output=True, text=True)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (
        typer_route.returncode,
        typer_route.stdout,
        typer_route.stderr,
    )


def test_the_table_answers_no_workload_argument(monkeypatch):
    """`krate run -- --help` or `krate run CMD --help` pass --help to the workload."""
    import io

    from krate.cli import quickhelp

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert quickhelp.text(["run", "--help"]) is not None  # else this test is void
    for args in (["run", "--", "--help"], ["run", "true", "--help"], ["build", "--", "-h"]):
        assert quickhelp.text(args) is None, args
