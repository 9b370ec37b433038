"""`krate policy allow`, `init --user` and `edit`: the installed krate changes real files.

Each change is checked by what the policy then decides (`policy explain`), by the exact
bytes left in the file (comments and layout kept, nothing written on a refusal), and by
the file's permissions.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from krate.policy.edit import USER_TEMPLATE
from krate.policy.manage import TEMPLATE
from tests.conftest import KRATE, run_krate
from tests.terminal_support import Terminal

COMMENTED = """\
# my policy: keep this comment
profile = "default"   # and this one

[network]
add = [
    "a.example",  # the mirror
    'b.example'
]

[env]
pass = ["NPM_CONFIG_REGISTRY"]
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    return ws


def explain(host: str, cwd: Path | None = None) -> dict:
    done = run_krate("policy", "explain", "net", host, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_allow_creates_a_private_user_policy_and_the_host_is_then_allowed(krate_home, project):
    assert explain("npm.corp.example")["verdict"] == "deny"
    done = run_krate("policy", "allow", "npm.corp.example")
    assert done.returncode == 0, done.stderr
    policy = krate_home / "policy.toml"
    assert f"added npm.corp.example to {policy} (network.add)" in done.stderr
    assert mode(policy) == 0o600 and mode(krate_home) == 0o700
    decided = explain("npm.corp.example")
    assert decided["verdict"] == "allow" and decided["layer"] == "user"
    assert decided["rule"] == "network.add: npm.corp.example"
    # The template's comments are all still there, and the file passes `check`.
    text = policy.read_text()
    assert all(line in text for line in USER_TEMPLATE.splitlines())
    assert run_krate("policy", "check", str(policy)).returncode == 0


def test_allow_keeps_comments_and_layout_and_adds_exactly_one_line(krate_home, project):
    krate_home.mkdir(mode=0o700)
    policy = krate_home / "policy.toml"
    policy.write_text(COMMENTED)
    policy.chmod(0o644)
    done = run_krate("policy", "allow", "https://c.example:8443/simple/")  # a URL, as copied
    assert done.returncode == 0, done.stderr
    assert mode(policy) == 0o600  # krate's own files are private
    assert policy.read_text() == COMMENTED.replace(
        "    'b.example'\n", "    'b.example',\n    \"c.example:8443\",\n"
    )
    assert explain("c.example:8443")["verdict"] == "allow"
    assert explain("c.example")["verdict"] == "deny"  # only the port the URL named


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("[network]\nadd = []\n", '[network]\nadd = ["n.example"]\n'),
        ('[network]\nadd = ["a.example",]\n', '[network]\nadd = ["a.example", "n.example"]\n'),
        (
            '[network]\nallow = ["a.example"] # mine\n',
            '[network]\nallow = ["a.example", "n.example"] # mine\n',
        ),
        ("# nothing yet\n", '# nothing yet\n\n[network]\nadd = ["n.example"]\n'),
        ("[network] # hosts\n", '[network] # hosts\nadd = ["n.example"]\n'),
        ('network.add = ["a.example"]\n', 'network.add = ["a.example", "n.example"]\n'),
    ],
)
def test_allow_edits_each_form_of_list_textually(krate_home, project, before, after):
    krate_home.mkdir(mode=0o700)
    policy = krate_home / "policy.toml"
    policy.write_text(before)
    done = run_krate("policy", "allow", "n.example")
    assert done.returncode == 0, done.stderr
    assert policy.read_text() == after
    assert explain("n.example")["verdict"] == "allow"


def test_allow_refuses_a_form_it_cannot_edit_and_writes_nothing(krate_home, project):
    krate_home.mkdir(mode=0o700)
    policy = krate_home / "policy.toml"
    policy.write_text('network = { add = ["a.example"] }\n')
    done = run_krate("policy", "allow", "n.example")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "krate policy edit" in done.stderr
    assert policy.read_text() == 'network = { add = ["a.example"] }\n'


def test_allow_twice_says_so_and_never_duplicates(krate_home, project):
    assert run_krate("policy", "allow", "x.example:8443").returncode == 0
    policy = krate_home / "policy.toml"
    first = policy.read_bytes()
    for same in ("x.example:8443", "X.Example.:8443", "http://x.example:8443/a"):
        again = run_krate("policy", "allow", same)
        assert again.returncode == 0
        assert "already in" in again.stderr and "nothing changed" in again.stderr
    assert policy.read_bytes() == first


def test_allow_private_adds_the_opt_in_and_the_host_only_when_the_file_lacks_it(
    krate_home, project
):
    krate_home.mkdir(mode=0o700)
    policy = krate_home / "policy.toml"
    policy.write_text(COMMENTED)
    done = run_krate("policy", "allow", "--private", "a.example")  # already in `add`
    assert done.returncode == 0, done.stderr
    assert "a.example is already in" in done.stderr and "(network.add)" in done.stderr
    assert policy.read_text() == COMMENTED.replace(
        "[network]\n", '[network]\nprivate_ok = ["a.example"]\n'
    )
    done = run_krate("policy", "allow", "--private", "http://m.example:8080/simple")
    assert done.returncode == 0, done.stderr
    text = policy.read_text()
    assert '    "m.example:8080",\n]' in text and 'private_ok = ["a.example", "m.example"]' in text
    assert "# the mirror" in text and "# and this one" in text
    assert run_krate("policy", "check", str(policy)).returncode == 0
    assert explain("m.example:8080")["verdict"] in ("allow", "deny")  # resolved as a run would
    again = run_krate("policy", "allow", "--private", "m.example:8080")
    assert again.returncode == 0 and again.stderr.count("already in") == 2
    assert again.stderr.strip().endswith("nothing changed")
    assert policy.read_text() == text


@pytest.mark.parametrize("bad", ["10.0.0.1", "[::1]:80", "*", "bad host"])
def test_allow_private_refuses_addresses_and_everything_and_writes_nothing(
    krate_home, project, bad
):
    done = run_krate("policy", "allow", "--private", bad)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("krate: invalid host") and done.stderr.count("\n") == 1
    assert not (krate_home / "policy.toml").exists()


@pytest.mark.parametrize("bad", ["bad host", "*.*.example", "a.example:99999", "x/y"])
def test_a_bad_host_is_the_same_error_as_check_and_leaves_the_file_alone(
    krate_home, project, tmp_path, bad
):
    krate_home.mkdir(mode=0o700)
    policy = krate_home / "policy.toml"
    policy.write_text(COMMENTED)
    done = run_krate("policy", "allow", bad)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert policy.read_text() == COMMENTED
    # `krate policy check` says the same of that entry in a file.
    probe = tmp_path / "probe.toml"
    probe.write_text(f"[network]\nadd = [{json.dumps(bad)}]\n")
    checked = run_krate("policy", "check", str(probe))
    reason = checked.stderr.split("invalid host pattern: ", 1)[1].strip()
    assert done.stderr.strip() == f"krate: invalid host pattern: {reason}"


def test_allow_refuses_to_touch_an_invalid_policy(krate_home, project):
    krate_home.mkdir(mode=0o700)
    policy = krate_home / "policy.toml"
    policy.write_text("[network]\nalow = []\n")
    done = run_krate("policy", "allow", "n.example")
    assert done.returncode == 1
    assert f"{policy}:2: unknown key `network.alow`" in done.stderr
    assert policy.read_text() == "[network]\nalow = []\n"


def test_allow_project_appends_to_krate_toml_which_widens_only_once_trusted(krate_home, project):
    (project / "krate.toml").write_text(TEMPLATE)
    os.chmod(project / "krate.toml", 0o644)
    done = run_krate("policy", "allow", "--project", "proj.example", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "krate policy trust" in done.stderr and "not trusted" in done.stderr
    assert mode(project / "krate.toml") == 0o644  # a project file keeps its mode
    assert not (krate_home / "policy.toml").exists()
    assert explain("proj.example", project)["verdict"] == "deny"  # untrusted: only narrows
    assert run_krate("policy", "trust", cwd=project).returncode == 0
    decided = explain("proj.example", project)
    assert decided["verdict"] == "allow" and decided["layer"] == "project"
    # Another host: the edit revokes the trust, and krate says so.
    again = run_krate("policy", "allow", "--project", "two.example", cwd=project)
    assert "revoked its trust" in again.stderr
    assert explain("two.example", project)["verdict"] == "deny"


def test_allow_through_a_symlinked_policy_changes_its_target(krate_home, project, tmp_path):
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "krate.toml").write_text(COMMENTED)
    krate_home.mkdir(mode=0o700)
    (krate_home / "policy.toml").symlink_to(dotfiles / "krate.toml")
    assert run_krate("policy", "allow", "n.example").returncode == 0
    assert (krate_home / "policy.toml").is_symlink()
    assert '"n.example"' in (dotfiles / "krate.toml").read_text()


# ---------------------------------------------------------------- init --user


def test_init_user_writes_the_commented_template_and_never_overwrites(krate_home, project):
    done = run_krate("policy", "init", "--user")
    assert done.returncode == 0, done.stderr
    policy = krate_home / "policy.toml"
    assert policy.read_text() == USER_TEMPLATE
    assert mode(policy) == 0o600 and mode(krate_home) == 0o700
    assert run_krate("policy", "check", str(policy)).returncode == 0
    policy.write_text("# mine\n")
    again = run_krate("policy", "init", "--user")
    assert again.returncode == 1 and "--force" in again.stderr
    assert policy.read_text() == "# mine\n"
    os.chmod(policy, 0o644)
    forced = run_krate("policy", "init", "--user", "--force")
    assert forced.returncode == 0 and policy.read_text() == USER_TEMPLATE
    assert mode(policy) == 0o600
    assert not (project / "krate.toml").exists()


# ---------------------------------------------------------------- edit


def editor_script(tmp_path: Path, body: str, name: str = "editor") -> str:
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def edit_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VISUAL", "EDITOR")}
    env.update(extra)
    return env


def test_edit_saves_a_valid_edit_privately(krate_home, project, tmp_path):
    editor = editor_script(tmp_path, "sed -i 's/^# wall_seconds = 3600/wall_seconds = 60/' \"$1\"")
    done = run_krate("policy", "edit", env=edit_env(EDITOR=editor), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    policy = krate_home / "policy.toml"
    assert "wall_seconds = 60" in policy.read_text() and mode(policy) == 0o600
    shown = json.loads(run_krate("policy", "show", "--json").stdout)
    assert shown["limits"]["wall_seconds"] == {"value": 60, "layer": "user"}


def test_edit_refuses_an_invalid_save_with_file_line_key_and_keeps_the_file(
    krate_home, project, tmp_path
):
    krate_home.mkdir(mode=0o700)
    policy = krate_home / "policy.toml"
    policy.write_text(COMMENTED)
    editor = editor_script(tmp_path, "sed -i 's/^add = \\[/ad = [/' \"$1\"")
    done = run_krate("policy", "edit", env=edit_env(EDITOR=editor), stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert f"{policy}:5: unknown key `network.ad` (did you mean `add`?)" in done.stderr
    assert policy.read_text() == COMMENTED
    kept = Path(done.stderr.rsplit("your edit is kept in ", 1)[1].strip())
    assert "ad = [" in kept.read_text() and mode(kept.parent) == 0o700
    assert "Traceback" not in done.stderr


def test_edit_prefers_visual_takes_editor_arguments_and_a_failing_editor_saves_nothing(
    krate_home, project, tmp_path
):
    marker = tmp_path / "which"
    visual = editor_script(tmp_path, f'echo "visual $*" > {marker}', "visual")
    env = edit_env(VISUAL=f"{visual} --wait", EDITOR="/nonexistent")
    done = run_krate("policy", "edit", env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert marker.read_text().startswith("visual --wait ")
    failing = editor_script(tmp_path, 'echo junk >> "$1"; exit 3', "failing")
    before = (krate_home / "policy.toml").read_text()
    refused = run_krate("policy", "edit", env=edit_env(EDITOR=failing), stdin=subprocess.DEVNULL)
    assert refused.returncode == 1 and refused.stderr == (
        f"krate: the editor exited with status 3; nothing saved to {krate_home / 'policy.toml'}\n"
    )
    assert (krate_home / "policy.toml").read_text() == before
    missing = run_krate("policy", "edit", env=edit_env(EDITOR="/nonexistent/ed"))
    assert missing.returncode == 2 and "set VISUAL or EDITOR" in missing.stderr


def test_edit_project_creates_krate_toml_and_says_trust_applies(krate_home, project, tmp_path):
    editor = editor_script(tmp_path, 'sed -i \'s/^# add = .*/add = ["p.example"]/\' "$1"')
    done = run_krate(
        "policy", "edit", "--project", env=edit_env(EDITOR=editor), cwd=project,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 'add = ["p.example"]' in (project / "krate.toml").read_text()
    assert mode(project / "krate.toml") == 0o644  # a new project file, as `policy init` makes
    assert "krate policy trust" in done.stderr
    assert not (krate_home / "policy.toml").exists()


def test_edit_on_a_terminal_reopens_the_editor_until_the_policy_is_valid(
    krate_home, project, tmp_path, terminals
):
    count = tmp_path / "count"
    editor = editor_script(
        tmp_path,
        f"echo x >> {count}\n"
        f'if [ "$(wc -l < {count})" -eq 1 ]; then echo "bogus = 1" >> "$1"; '
        "else sed -i '/^bogus = 1$/d' \"$1\"; fi",
    )
    term = Terminal([KRATE, "policy", "edit"], env=edit_env(EDITOR=editor), cwd=project)
    terminals.append(term)
    term.expect(rb"policy.toml:36: unknown key `limits.bogus`")
    term.expect(rb"re-open the editor\? \[Y/n\]")
    term.send(b"y\r")
    assert term.wait() == 0, term.out
    assert count.read_text() == "x\nx\n"
    assert (krate_home / "policy.toml").read_text() == USER_TEMPLATE


def test_help_lists_the_new_commands():
    done = run_krate("policy", "--help", env=dict(os.environ, COLUMNS="200"))
    for word in ("allow", "edit", "init"):
        assert word in done.stdout


# ---------------------------------------------------------------- a real run


@pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")
def test_a_host_added_by_policy_allow_is_reached_by_the_next_run(box):
    from .egress_support import Server

    server = Server()
    try:
        host = f"localhost:{server.port}"
        curl = f"curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' http://{host}/"
        before = box.sh(curl)
        assert before.stdout == "403"  # the proxy refused it
        assert [
            d["verdict"] for d in box.last_run()["decisions"] if d.get("area") == "network"
        ] == ["deny"]
        added = box.krate("policy", "allow", host)
        assert added.returncode == 0, added.stderr
        policy = box.krate_home / "policy.toml"
        assert stat.S_IMODE(policy.stat().st_mode) == 0o600
        after = box.sh(curl)
        assert after.returncode == 0 and after.stdout == "200", after.stderr
        [decision] = [d for d in box.last_run()["decisions"] if d.get("area") == "network"]
        assert decision["verdict"] == "allow" and decision["layer"] == "user"
        assert decision["rule"] == f"network.add: {host}"
    finally:
        server.close()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            '[network]\nadd = [\n  "a.example", # one\n  "b.example" # two\n]\n',
            '[network]\nadd = [\n  "a.example", # one\n  "b.example", # two\n  "n.example",\n]\n',
        ),
        (
            '[network]\nadd = [ # hosts\n]\n[env]\npass = ["X"]\n',
            '[network]\nadd = [ # hosts\n"n.example"]\n[env]\npass = ["X"]\n',
        ),
        (
            '[network]\nadd = ["a.example"]\n[limits]\nwall_seconds = 5 # add = ["x"]\n',
            '[network]\nadd = ["a.example", "n.example"]\n[limits]\nwall_seconds = 5 # add = ["x"]'
            "\n",
        ),
        (
            '\ufeff[network]\r\nadd = ["a.example"]\r\n',
            '\ufeff[network]\r\nadd = ["a.example", "n.example"]\r\n',
        ),
    ],
)
def test_allow_inserts_after_comments_and_keeps_everything_else(tmp_path, before, after):
    from krate.policy.edit import allow_host

    policy = tmp_path / "policy.toml"
    policy.write_bytes(before.encode())
    done = allow_host(policy, "n.example", template=USER_TEMPLATE)
    assert not done.already and done.key == "network.add"
    assert policy.read_bytes().decode() == after


def test_concurrent_allows_all_land(krate_home, project):
    hosts = [f"h{i}.example" for i in range(8)]
    procs = [subprocess.Popen([KRATE, "policy", "allow", h], stderr=subprocess.PIPE) for h in hosts]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    text = (krate_home / "policy.toml").read_text()
    assert all(text.count(f'"{h}"') == 1 for h in hosts), text
    assert run_krate("policy", "check", str(krate_home / "policy.toml")).returncode == 0


def test_edit_refuses_to_overwrite_a_change_made_while_the_editor_was_open(
    krate_home, project, tmp_path
):
    krate_home.mkdir(mode=0o700)
    policy = krate_home / "policy.toml"
    policy.write_text(COMMENTED)
    editor = editor_script(
        tmp_path, f'{KRATE} policy allow meanwhile.example\necho "# mine" >> "$1"'
    )
    done = run_krate("policy", "edit", env=edit_env(EDITOR=editor), stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "changed while the editor was open; nothing saved" in done.stderr
    assert '"meanwhile.example"' in policy.read_text() and "# mine" not in policy.read_text()
    kept = Path(done.stderr.split("your edit is kept in ", 1)[1].split(":", 1)[0])
    assert kept.read_text().endswith("# mine\n")


def test_project_init_force_overwrites_and_keeps_the_files_mode(krate_home, project):
    target = project / "krate.toml"
    target.write_text("# old\n")
    target.chmod(0o640)
    refused = run_krate("policy", "init", cwd=project)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert target.read_text() == "# old\n"
    done = run_krate("policy", "init", "--force", cwd=project)
    assert done.returncode == 0 and target.read_text() == TEMPLATE and mode(target) == 0o640


def test_edit_on_a_terminal_answered_no_saves_nothing_and_says_each_problem_once(
    krate_home, project, tmp_path, terminals
):
    editor = editor_script(tmp_path, 'echo "bogus = 1" >> "$1"')
    term = Terminal([KRATE, "policy", "edit"], env=edit_env(EDITOR=editor), cwd=project)
    terminals.append(term)
    term.expect(rb"re-open the editor\? \[Y/n\]")
    term.send(b"n\r")
    assert term.wait() == 1, term.out
    assert term.out.count(b"unknown key `limits.bogus`") == 1, term.out
    assert b"nothing saved to " in term.out
    assert not (krate_home / "policy.toml").exists()
