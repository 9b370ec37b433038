"""Every krate.toml from the working folder up applies, each only narrowing until trusted.

A workload can write anywhere in its workspace, so it can plant `sub/krate.toml`
(and `sub/.git`, to make `sub` look like a repository root). When only the nearest
file counted, a later run from `sub` lost the project's narrowing file. These tests
attack that for real (the installed `krate`, real bubblewrap, as root and as the
ordinary user) and check the layering rules that replace it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from krate.errors import UsageError
from krate.policy.layers import find_project_files
from tests._policy_util import effective

from .conftest import chown_tree
from .run_support import SECRET, Box

needs_bwrap = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

NARROW = '[filesystem]\ndeny_read = ["private"]\n\n[network]\nallow = []\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _own(box: Box, *paths: Path) -> None:
    if box.user:
        for path in paths:
            chown_tree(path, box.user)


# ---------------------------------------------------------------- the attack, for real


@needs_bwrap
@pytest.mark.parametrize("plant_git", [False, True], ids=["plain", "with-.git"])
def test_a_file_planted_in_a_subfolder_cannot_undo_the_project_file(box, plant_git):
    write(box.ws / "krate.toml", NARROW)
    secret = write(box.ws / "private" / "secret.txt", SECRET + "\n")
    _own(box, box.ws)
    marker = "mkdir -p sub/.git && " if plant_git else "mkdir -p sub && "
    planted = box.sh(marker + "printf '# nothing to see here\\n' > sub/krate.toml && echo planted")
    assert planted.returncode == 0 and planted.stdout == "planted\n", planted.stderr

    out = box.sh(f"cat {secret} ../private/secret.txt; echo end", cwd=box.ws / "sub")
    assert SECRET not in out.stdout and out.stdout.endswith("end\n")
    run = box.last_run()
    assert str(secret.parent) in run["layout"]["hidden"]
    assert run["layout"]["network"] == "none"  # the project's `allow = []` still holds
    # and the policy names both files, the planted one as its own (untrusted) layer
    shown = json.loads(box.krate("policy", "show", "--json", cwd=box.ws / "sub").stdout)
    sources = [(layer["source"], layer["trusted"]) for layer in shown["layers"] if layer["source"]]
    assert sources == [(str(box.ws / "krate.toml"), False), (str(box.ws / "sub/krate.toml"), False)]


@needs_bwrap
def test_a_trusted_outer_file_still_widens_and_an_untrusted_inner_one_only_narrows(box):
    write(box.ws / "krate.toml", '[filesystem]\nallow_write = ["shared"]\n')
    write(box.ws / "shared" / ".keep", "")
    write(box.home / "elsewhere" / ".keep", "")
    inner = write(
        box.ws / "sub" / "krate.toml",
        '[filesystem]\ndeny_read = ["hidden.txt"]\nallow_write = ["../../elsewhere"]\n',
    )
    write(box.ws / "sub" / "hidden.txt", SECRET + "\n")
    _own(box, box.ws, box.home / "elsewhere")
    trusted = box.krate("policy", "trust", "krate.toml")
    assert trusted.returncode == 0, trusted.stderr

    script = (
        "echo x > ../shared/out.txt && echo WROTE-SHARED; "
        "echo x > ../../elsewhere/out.txt 2>/dev/null && echo WROTE-ELSEWHERE; "
        "cat hidden.txt; echo end"
    )
    out = box.sh(script, cwd=box.ws / "sub")
    assert "WROTE-SHARED" in out.stdout  # the trusted outer file widened
    assert "WROTE-ELSEWHERE" not in out.stdout  # the untrusted inner one could not
    assert SECRET not in out.stdout and out.stdout.endswith("end\n")  # but it narrowed
    assert (box.ws / "shared" / "out.txt").exists()
    assert not (box.home / "elsewhere" / "out.txt").exists()
    assert f"{inner}:3: filesystem.allow_write `../../elsewhere`" in out.stderr
    run = box.last_run()
    assert str(box.ws / "sub" / "hidden.txt") in run["layout"]["hidden"]


# ---------------------------------------------------------------- a krate.toml written by a run


@needs_bwrap
def test_a_krate_toml_written_during_a_run_is_reported_and_recorded(box):
    other = write(box.ws / "other" / "krate.toml", "# narrowing, before the run\n")
    _own(box, box.ws)
    script = (
        "mkdir -p deep/er && echo '[network]' > deep/er/krate.toml; "
        "echo 'allow = [\"*\"]' >> other/krate.toml; echo done"
    )
    out = box.sh(script)
    assert out.returncode == 0 and out.stdout == "done\n"
    planted = box.ws / "deep" / "er" / "krate.toml"
    for path in (planted, other):
        assert f"krate: warning: {path} appeared or changed during this run" in out.stderr
    [finished] = [e for e in box.events("run.finished") if e["run_id"] == box.last_run()["id"]]
    assert finished["data"]["policy_files_changed"] == sorted([str(planted), str(other)])
    assert box.last_run()["policy_files_changed"] == sorted([str(planted), str(other)])
    shown = box.krate("runs", "show", "last")
    assert str(planted) in shown.stdout

    quiet = box.sh("cat deep/er/krate.toml >/dev/null; echo ok > file.txt")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "policy_files_changed" not in box.events("run.finished")[-1]["data"]


# ---------------------------------------------------------------- the layering rules


def test_every_file_up_to_the_filesystem_root_is_found_outermost_first(tmp_path):
    outer = write(tmp_path / "krate.toml", "")
    write(tmp_path / "repo" / ".git" / "HEAD", "")
    middle = write(tmp_path / "repo" / "krate.toml", "")
    write(tmp_path / "repo" / "a" / ".git" / "HEAD", "")  # a nested (or planted) repository
    inner = write(tmp_path / "repo" / "a" / "b" / "krate.toml", "")
    (tmp_path / "repo" / "a" / "b" / "krate.toml.d").mkdir()
    (tmp_path / "repo" / "a" / "krate.toml").mkdir()  # a folder of that name is not a policy
    found = find_project_files(tmp_path / "repo" / "a" / "b")
    assert found[-3:] == [outer, middle, inner]


def test_an_untrusted_inner_file_narrows_a_trusted_outer_file(tmp_path):
    home = tmp_path / "home"
    outer = write(
        tmp_path / "krate.toml",
        '[network]\nadd = ["api.example.com"]\n[limits]\nprocesses = 50\n',
    )
    inner = write(
        tmp_path / "sub" / "krate.toml",
        '[network]\nallow = ["api.example.com", "evil.example"]\n[limits]\nprocesses = 99\n'
        '[env]\npass = ["GITHUB_TOKEN"]\n',
    )
    policy = effective(tmp_path / "sub", home, trusted={str(outer): sha(outer)})
    assert policy.decide_net("api.example.com", 443)[:3] == (
        "allow",
        "network.allow: api.example.com",
        "project:sub",
    )
    assert policy.decide_net("registry.npmjs.org", 443).verdict == "deny"
    assert policy.decide_net("evil.example", 443).verdict == "deny"
    assert policy.limits.processes == 50
    assert policy.decide_env("GITHUB_TOKEN").verdict == "deny"
    assert [layer["layer"] for layer in policy.layers][1:3] == ["project", "project:sub"]
    assert policy.name == "default+project+project:sub"
    ignored = policy.ignored
    assert any(n.startswith(f"{inner}:2: network.allow `evil.example` ignored") for n in ignored)
    assert any(n.startswith(f"{inner}:4: limits.processes = 99 ignored") for n in ignored)
    # every file found is read-only for the workload
    assert policy.decide_write(outer).verdict == policy.decide_write(inner).verdict == "deny"
    # untrusting the outer file takes its widening away from the subfolder too
    untrusted = effective(tmp_path / "sub", home)
    assert untrusted.decide_net("api.example.com", 443).verdict == "deny"


def test_a_planted_symlink_does_not_borrow_the_trust_of_its_target(tmp_path):
    home = tmp_path / "home"
    widening = '[network]\nadd = ["evil.example"]\n'
    elsewhere = write(tmp_path / "other-project" / "krate.toml", widening)
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "krate.toml").symlink_to(elsewhere)
    trusted = {str(elsewhere): sha(elsewhere)}
    policy = effective(ws / "sub", home, trusted=trusted)
    assert policy.decide_net("evil.example", 443).verdict == "deny"
    [layer] = [layer for layer in policy.layers if layer["source"]]
    assert (layer["source"], layer["trusted"]) == (str(ws / "sub" / "krate.toml"), False)
    # the link and its target are both read-only for the workload
    assert policy.decide_write(ws / "sub" / "krate.toml").verdict == "deny"
    assert policy.decide_write(elsewhere).verdict == "deny"


def test_show_explain_list_and_trust_name_each_file(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    outer = write(tmp_path / "ws" / "krate.toml", '[filesystem]\ndeny_read = ["a"]\n')
    inner = write(tmp_path / "ws" / "sub" / "krate.toml", '[filesystem]\ndeny_read = ["b"]\n')
    monkeypatch.chdir(inner.parent)
    text = cli("policy", "show").out
    assert f"layer project: {outer} (NOT trusted" in text
    assert f"layer project:sub: {inner} (NOT trusted" in text
    explained = json.loads(cli("policy", "explain", "read", "b", "--json").out)
    assert explained["layer"] == "project:sub" and explained["verdict"] == "deny"
    assert json.loads(cli("policy", "explain", "read", "../a", "--json").out)["layer"] == "project"
    listed = [r for r in json.loads(cli("policy", "list", "--json").out) if r["kind"] == "project"]
    assert [(r["name"], r["path"], r["state"]) for r in listed] == [
        ("project", str(outer), "untrusted"),
        ("project:sub", str(inner), "untrusted"),
    ]
    # `trust` without a file would have to guess which one: it refuses and lists them
    refused = cli("policy", "trust")
    assert refused.code == UsageError.exit_code
    assert str(outer) in refused.err and str(inner) in refused.err
    assert cli("policy", "trust", str(outer)).code == 0
    listed = [r for r in json.loads(cli("policy", "list", "--json").out) if r["kind"] == "project"]
    assert [r["state"] for r in listed] == ["trusted", "untrusted"]


def test_written_since_uses_ctime_which_a_workload_cannot_set_back(tmp_path):
    from krate.policy import watch

    old = write(tmp_path / "old" / "krate.toml", "")
    untouched = write(tmp_path / "untouched" / "krate.toml", "")
    since = watch.clock()
    while since <= untouched.stat().st_ctime_ns:  # a later tick of the coarse clock
        since = watch.clock()
    write(old, "# edited\n")
    os.utime(old, (0, 0))  # mtime back to 1970: ctime still says "now"
    nested = write(tmp_path / "a" / "krate.toml" / "krate.toml", "")  # inside a folder of that name
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "krate.toml").symlink_to(untouched)
    written = watch.written_since([tmp_path, tmp_path / "a"], since)
    assert written == watch.Written(
        sorted([str(old), str(nested), str(tmp_path / "link/krate.toml")]), True
    )
    assert str(untouched) not in written.paths
    assert watch.written_since([tmp_path], since, limit=3).complete is False
    assert watch.written_since([tmp_path / "missing"], since) == watch.Written([], True)
