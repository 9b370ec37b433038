"""TAB completion of command and option names without loading Typer.

Every TAB press runs krate. Typer's completion imports Typer (about 22 ms) and, for
zsh, rich (about 45 ms more) before it answers, so `main()` asks this module first,
like `--version`, before the lockdown: it imports nothing but the generated table
(cli/complete_table.py, pure data), reads no file, opens no store and makes no
connection. It answers only the common case: the words before the cursor name a
command (`krate audit v`, `krate run --pol`), with no option given yet. Anything
else (an option's value, an argument, quoting, `=`) returns None and Typer answers.

The table holds what Typer itself offers at each command (`python -m
krate.cli.quickcomplete --write` regenerates it from the Typer app);
tests/test_completions.py keeps it current and checks that this module prints
exactly what Typer prints, for bash, zsh and fish. `--write` also writes every
command's plain help (cli/help_table.py, for cli/quickhelp.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

SHELLS = ("bash", "zsh", "fish")
TABLE_FILE = "complete_table.py"
HELP_FILE = "help_table.py"


def answer(environ: Mapping[str, str]) -> int | None:
    """Print the completions and return the exit code, or None to leave it to Typer."""
    instruction = environ.get("_KRATE_COMPLETE", "")
    shell = instruction.removeprefix("complete_")
    if shell not in SHELLS or instruction == shell:
        return None
    found = _words(shell, environ)
    if found is None:
        return None
    path, incomplete = found
    items = _items(path, incomplete)
    if items is None:
        return None
    if shell == "bash":
        _print("\n".join(value for value, _zsh, _fish in items))
    elif shell == "zsh":
        lines = [f'"{_zsh_escape(v)}":"{z}"' if z is not None else f'"{_zsh_escape(v)}"'
                 for v, z, _fish in items]  # fmt: skip
        _print(f"_arguments '*: :(({chr(10).join(lines)}))'" if lines else "_files")
    else:
        shown = [f"{v}\t{f}" if f is not None else v for v, _zsh, f in items]
        action = environ.get("_TYPER_COMPLETE_FISH_ACTION", "")
        if action == "is-args":
            return 0 if shown else 1
        _print("\n".join(shown) if action == "get-args" and shown else "")
    return 0


def _words(shell: str, environ: Mapping[str, str]) -> tuple[list[str], str] | None:
    """(complete words after `krate`, the word being completed), as Typer splits them."""
    if shell == "bash":
        line = environ.get("COMP_WORDS", "")
        if not _plain(line):
            return None
        words = line.split()
        try:
            cword = int(environ.get("COMP_CWORD", ""))
        except ValueError:
            return None
        if cword < 1 or cword > len(words):
            return None
        return words[1:cword], words[cword] if cword < len(words) else ""
    line = environ.get("_TYPER_COMPLETE_ARGS", "")
    if not _plain(line):
        return None
    words = line.split()[1:]
    if words and not line.endswith(" "):
        return words[:-1], words[-1]
    return words, ""


def _plain(line: str) -> bool:
    """Printable ASCII without quotes or escapes: str.split() splits it as shlex would."""
    return line.isascii() and line.isprintable() and not any(c in line for c in "\"'\\#")


def _items(path: list[str], incomplete: str) -> list[tuple[str, str | None, str | None]] | None:
    """What Typer offers for `incomplete` after the command `path`, or None (Typer decides)."""
    from krate.cli.complete_table import COMMANDS, OPTIONS

    key = " ".join(path)
    if key not in OPTIONS or "=" in incomplete:
        return None
    if key not in COMMANDS and not incomplete.startswith("-"):
        return None  # a command's arguments (run ids, files): Typer's callbacks
    items = []
    if incomplete and not incomplete[0].isalnum():
        items += [item for item in OPTIONS[key] if item[0].startswith(incomplete)]
    if not incomplete.startswith("-"):
        items += [item for item in COMMANDS.get(key, ()) if item[0].startswith(incomplete)]
    return items


def _zsh_escape(s: str) -> str:
    return (
        s.replace('"', '""')
        .replace("'", "''")
        .replace("$", "\\$")
        .replace("`", "\\`")
        .replace(":", r"\\:")
    )


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- the table, from Typer


def table() -> tuple[dict, dict]:
    """(COMMANDS, OPTIONS) as Typer offers them: {command path: [(value, zsh, fish)]}.

    zsh and fish show help texts, which Typer passes through rich (which may wrap them
    onto several lines); the table holds them as Typer prints them (None: no help).
    Typer's completion classes give the items one by one: its printed answer could not
    be split back into them. Used by tests and `--write` only, never at a TAB.
    """
    import typer
    from typer._completion_classes import FishComplete, ZshComplete

    from krate.cli.app import build

    cli = typer.main.get_command(build(None))
    commands, options = {}, {}

    def items(path: list[str], incomplete: str) -> list[tuple[str, str | None, str | None]]:
        zsh = ZshComplete(cli, {}, "krate", "_KRATE_COMPLETE")
        fish = FishComplete(cli, {}, "krate", "_KRATE_COMPLETE")
        out = []
        for z, f in zip(zsh.get_completions(list(path), incomplete),
                        fish.get_completions(list(path), incomplete), strict=True):  # fmt: skip
            zsh_help = zsh.format_completion(z).partition('":"')[2][:-1] if z.help else None
            fish_help = fish.format_completion(f).partition("\t")[2] if f.help else None
            out.append((z.value, zsh_help, fish_help))
        return out

    def walk(path: list[str], command) -> None:
        key = " ".join(path)
        options[key] = items(path, "-")
        if hasattr(command, "commands"):
            commands[key] = items(path, "")
            for name in command.commands:
                walk([*path, name], command.commands[name])

    walk([], cli)
    return commands, options


def root_listing() -> list[tuple[str, str, str]]:
    """[(name, "group" or "command", help as `krate --help` lists it)], in Typer's order.

    `krate --help` off a terminal lists these without importing every command's module
    (cli/app.py `build(root_help=True)`); tests/test_cli_polish.py compares the result
    with the real tree's help.
    """
    import typer

    from krate.cli import plainhelp
    from krate.cli.app import build

    cli = typer.main.get_command(build(None))
    ctx = cli.make_context("krate", [], resilient_parsing=True)
    listed = []
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        kind = "group" if hasattr(command, "list_commands") else "command"
        listed.append((name, kind, plainhelp._command_help(command)))
    return listed


def help_texts() -> dict[tuple[str, ...], str]:
    """{command words: what `krate WORDS --help` prints off a terminal through Typer}.

    Typer's own route (cli/main.py `_typer`) in this process, its output captured, with
    no FORCE_COLOR and no COLUMNS: cli/quickhelp.py prints these only in that case.
    """
    import contextlib
    import io
    import os

    import typer

    from krate.cli import main
    from krate.cli.app import build

    cli = typer.main.get_command(build(None))
    paths: list[tuple[str, ...]] = []

    def walk(path: tuple[str, ...], command) -> None:
        paths.append(path)
        for name in getattr(command, "commands", {}):
            walk((*path, name), command.commands[name])

    walk((), cli)
    saved = {name: os.environ.pop(name, None) for name in ("FORCE_COLOR", "COLUMNS")}
    texts = {}
    try:
        for path in paths:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main._typer([*path, "--help"], completing=False)
            if code != 0:
                raise RuntimeError(f"krate {' '.join(path)} --help exited {code}")
            texts[path] = out.getvalue()
    finally:
        os.environ.update({name: value for name, value in saved.items() if value is not None})
    return texts


def typer_answer(cli, env: dict[str, str]) -> tuple[int, str]:
    """(exit code, output) of Typer's own completion for `env`, in this process."""
    import contextlib
    import io
    import os

    out = io.StringIO()
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out):
            try:
                cli(prog_name="krate", args=[])
                code = 0
            except SystemExit as exc:
                code = exc.code or 0
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return code, out.getvalue()


def source() -> str:
    commands, options = table()
    return (
        '"""Generated by `python -m krate.cli.quickcomplete --write` from the Typer app: do not\n'
        'edit. What Typer offers at each command: {path: [(value, zsh help, fish help)]}."""\n\n'
        "# ruff: noqa: E501\n\n"
        f"COMMANDS = {commands!r}\nOPTIONS = {options!r}\n"
        "\n# `krate --help`'s list of commands: (name, kind, help), in Typer's order.\n"
        f"ROOT = {root_listing()!r}\n"
    )


def help_source() -> str:
    return (
        '"""Generated by `python -m krate.cli.quickcomplete --write` from the Typer app: do not\n'
        "edit. What `krate WORDS --help` prints off a terminal (cli/quickhelp.py):\n"
        '{words: text}."""\n\n'
        "# ruff: noqa: E501\n\n"
        f"HELP = {help_texts()!r}\n"
    )


if __name__ == "__main__":
    from pathlib import Path

    target = Path(__file__).with_name(TABLE_FILE)
    if sys.argv[1:] == ["--write"]:
        target.write_text(source())
        target.with_name(HELP_FILE).write_text(help_source())
    else:
        sys.exit("usage: python -m krate.cli.quickcomplete --write")
