"""Shell completions: committed files are current, real bash completes, TAB stays read-only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from krate.cli import complete
from tests.conftest import KRATE

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"
BASH = shutil.which("bash")


def test_committed_completions_are_not_stale(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-completions"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("krate.bash", "_krate", "krate.fish"):
        fresh = (tmp_path / name).read_text()
        assert (COMPLETIONS / name).read_text() == fresh, (
            f"{name} is stale: scripts/gen-completions"
        )


def test_stale_check_notices_an_edited_file(tmp_path):
    for name in ("krate.bash", "_krate", "krate.fish"):
        shutil.copy(COMPLETIONS / name, tmp_path / name)
    with (tmp_path / "krate.fish").open("a") as handle:
        handle.write("# edited by hand\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-completions"), "--out", str(tmp_path)]
        + ["--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "krate.fish" in done.stdout


def test_zsh_file_is_autoloadable_and_completes_the_first_tab():
    lines = (COMPLETIONS / "_krate").read_text().splitlines()
    assert lines[0] == "#compdef krate", "zsh ignores a completion file without #compdef first"
    assert lines[-1] == 'if [[ "${funcstack[1]}" == "_krate" ]]; then _krate_completion "$@"; fi'
    assert "compdef _krate_completion krate" in lines
    assert "_KRATE_COMPLETE=complete_zsh" in "\n".join(lines)


@pytest.mark.parametrize(
    ("shell", "check"), [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])]
)
def test_zsh_and_fish_files_parse(shell, check):
    if shutil.which(check[0]) is None:
        pytest.skip(f"{shell} is not installed here")
    name = {"zsh": "_krate", "fish": "krate.fish"}[shell]
    done = subprocess.run([*check, str(COMPLETIONS / name)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def bash_complete(*words: str, home: Path | None = None, cwd: Path | None = None) -> list[str]:
    """Source completions/krate.bash in a real bash and press TAB after `words`."""
    if BASH is None:
        pytest.skip("bash is not installed")
    script = (
        f'source "{COMPLETIONS / "krate.bash"}"\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))\n'
        "complete -p krate >/dev/null || exit 3\n"
        "_krate_completion krate\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = dict(os.environ, PATH=f"{Path(KRATE).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    if home is not None:
        env["KRATE_HOME"] = str(home)
    done = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", script, "bash", *words],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_command_groups_and_commands():
    assert bash_complete("krate", "au") == ["audit"]
    assert bash_complete("krate", "audit", "v") == ["verify"]
    assert "--json" in bash_complete("krate", "audit", "verify", "--")


def test_bash_completes_the_private_host_opt_in_quiet_and_no_resolve():
    for command in ("run", "build"):
        assert bash_complete("krate", command, "--allow-p") == ["--allow-private-host"]
        assert bash_complete("krate", command, "--qu") == ["--quiet"]
    assert bash_complete("krate", "policy", "show", "--allow-p") == ["--allow-private-host"]
    assert bash_complete("krate", "policy", "explain", "--no-r") == ["--no-resolve"]


def test_policy_option_completes_builtin_profiles_and_policy_files(tmp_path):
    from krate.policy.builtin import PROFILES

    assert set(complete.PROFILES) == set(PROFILES), "keep cli/complete.py's names in step"
    (tmp_path / "team.toml").write_text('profile = "strict"\n')
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "policies").mkdir()
    got = bash_complete("krate", "policy", "show", "--policy", "", cwd=tmp_path)
    assert got == ["strict", "default", "open", "policies/", "team.toml"]
    assert bash_complete("krate", "policy", "show", "--policy", "st", cwd=tmp_path) == ["strict"]


def test_bash_completes_the_policy_editing_commands_and_tab_writes_no_policy(tmp_path):
    home = tmp_path / "home"
    assert set(bash_complete("krate", "policy", "", home=home)) >= {"allow", "edit", "init"}
    assert bash_complete("krate", "policy", "al") == ["allow"]
    assert {"--user", "--force"} <= set(bash_complete("krate", "policy", "init", "--", home=home))
    assert "--project" in bash_complete("krate", "policy", "allow", "--", home=home)
    assert "--project" in bash_complete("krate", "policy", "edit", "--", home=home)
    assert not (home / "policy.toml").exists()


def _record_runs(home: Path, ids: list[str]) -> None:
    """Rows in the runs index, written the way krate writes them (through the store)."""
    from krate.paths import Paths
    from krate.store import open_store

    with open_store(Paths(home, home)) as store, store.write():
        for number, rid in enumerate(ids):
            store.conn.execute(
                "INSERT INTO runs (id, started, status, argv, cwd, workspace, backend) "
                "VALUES (?, ?, 'finished', '[]', '/', '/', 'bwrap')",
                (rid, f"2026-01-0{number + 1}T00:00:00.000000Z"),
            )


def test_run_id_completion_offers_last_and_newest_ids_without_touching_the_store(krate_home):
    _record_runs(krate_home, ["01AAAA", "01AABB", "01BBBB"])
    before = {p.name: p.stat().st_mtime_ns for p in krate_home.iterdir()}
    assert bash_complete("krate", "runs", "show", "", home=krate_home) == [
        "last",
        "01BBBB",
        "01AABB",
        "01AAAA",
    ]
    assert bash_complete("krate", "runs", "show", "01AA", home=krate_home) == ["01AABB", "01AAAA"]
    assert bash_complete("krate", "audit", "list", "--run", "01B", home=krate_home) == ["01BBBB"]
    after = {p.name: p.stat().st_mtime_ns for p in krate_home.iterdir()}
    assert after == before, "a TAB created or changed a file in the data folder"


def test_run_id_completion_is_silent_without_a_database_or_on_a_corrupt_one(krate_home):
    assert bash_complete("krate", "runs", "show", "", home=krate_home) == ["last"]
    assert not krate_home.exists(), "a TAB created the data folder"
    krate_home.mkdir(mode=0o700)
    (krate_home / "krate.db").write_bytes(b"not a database")
    assert bash_complete("krate", "runs", "show", "", home=krate_home) == ["last"]
    assert sorted(p.name for p in krate_home.iterdir()) == ["krate.db"]


def test_completing_run_ids_loads_neither_sqlite_utils_nor_the_policy_package(krate_home):
    _record_runs(krate_home, ["01CCCC"])
    code = (
        "import os, sys\n"
        "os.environ.update(_KRATE_COMPLETE='complete_bash', COMP_WORDS='krate runs show 01', "
        "COMP_CWORD='3')\n"
        "from krate.cli.main import main\n"
        "main(['runs', 'show', '01'], protect=False)\n"
        "print([m for m in ('sqlite_utils', 'krate.policy', 'keyring') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["01CCCC", "[]"]


def test_install_completion_still_works(tmp_path):
    env = dict(
        os.environ,
        HOME=str(tmp_path),
        SHELL="/bin/bash",
        _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1",
    )
    done = subprocess.run(
        [KRATE, "--install-completion", "bash"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    installed = tmp_path / ".bash_completions" / "krate.sh"
    assert "_KRATE_COMPLETE=complete_bash" in installed.read_text()
    assert str(installed) in (tmp_path / ".bashrc").read_text()
    shown = subprocess.run(
        [KRATE, "--show-completion", "zsh"], env=env, capture_output=True, text=True
    )
    assert shown.stdout.splitlines()[0] == "#compdef krate"


def test_the_quick_completion_table_is_what_typer_offers():
    """cli/complete_table.py is generated: a new command or option needs it regenerated."""
    from krate.cli import complete_table, quickcomplete

    commands, options = quickcomplete.table()
    hint = "stale: python -m krate.cli.quickcomplete --write (then ruff format)"
    assert commands == complete_table.COMMANDS, hint
    # Click orders `-h`/`--help` by a set, differently in each process: compare as sets.
    assert {k: sorted(v) for k, v in complete_table.OPTIONS.items()} == {
        k: sorted(v) for k, v in options.items()
    }, hint
    # `krate --help` off a terminal lists the commands from it (cli/app.py).
    assert quickcomplete.root_listing() == complete_table.ROOT, hint


def _lines() -> list[str]:
    """Command lines up to the cursor: command paths, partial names, options, odd input."""
    from krate.cli import complete_table

    lines = []
    for path in complete_table.OPTIONS:
        base = f"krate {path} ".replace("  ", " ")
        names = [v for v, _z, _f in complete_table.COMMANDS.get(path, ())]
        opts = [v for v, _z, _f in complete_table.OPTIONS[path]]
        lines += [base, base + "-", base + "--", base + "-x", base + ".", base + "zz"]
        lines += [base + n[:k] for n in names for k in (1, 2)]
        lines += [base + o[:k] for o in opts for k in (2, 4)] + [base + o for o in opts[:3]]
        lines += [base + opts[0] + "=", base + opts[0] + "=x"] if opts else []
        lines += [base + n + " -" for n in names[:2]] + [base + "-- -"]
    lines += ["krate", "krate bogus ", "krate bogus -", "krate run --policy ", "krate run -v --"]
    lines += ["krate runs show ", "krate 'au", "krate a\\ u", "krate run \t-", "krate au\u00a0b"]
    return lines


def _lines_of(text: str) -> list[str]:
    """The completion lines, sorted (zsh's are inside one `_arguments '*: :((...))'`)."""
    prefix, suffix = "_arguments '*: :((", "))'\n"
    if text.startswith(prefix) and text.endswith(suffix):
        text = text[len(prefix) : -len(suffix)]
    return sorted(text.split("\n"))


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_quick_completion_prints_what_typer_prints(shell):
    """Every answer the quick path gives is byte for byte Typer's (the rest goes to Typer)."""
    import contextlib
    import io

    import typer

    from krate.cli import quickcomplete
    from krate.cli.app import build

    cli = typer.main.get_command(build(None))
    answered = 0
    for line in _lines():
        if shell == "bash":
            words = line.split(" ")
            envs = [{"COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}]
        elif shell == "zsh":
            envs = [{"_TYPER_COMPLETE_ARGS": line}]
        else:
            envs = [{"_TYPER_COMPLETE_ARGS": line, "_TYPER_COMPLETE_FISH_ACTION": action}
                    for action in ("get-args", "is-args")]  # fmt: skip
        for env in envs:
            env["_KRATE_COMPLETE"] = f"complete_{shell}"
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                quick = quickcomplete.answer(env)
            if quick is None:
                continue
            answered += 1
            code, text = quickcomplete.typer_answer(cli, env)
            # the same lines; their order may differ only where Click's own order is a set's
            # (`-h`/`--help`); every shell sorts what it shows
            assert quick == code, (shell, line, env)
            assert _lines_of(out.getvalue()) == _lines_of(text), (shell, line)
            if "-h" not in text:
                assert out.getvalue() == text, (shell, line, env)
    assert answered > 150
