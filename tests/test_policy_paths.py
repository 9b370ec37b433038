"""Path rules: `~`, `..`, symlinks and whole-component matching, on a real temporary tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krate.policy import Flags, paths
from krate.policy.layers import compile_layers
from krate.policy.manage import explain
from krate.policy.model import Item, Layer
from tests._policy_util import effective

COMPONENT = st.sampled_from(["a", "b", "ab", ".ssh", ".sshfoo", "project", "project2", "x y"])
COMPONENTS = st.lists(COMPONENT, min_size=1, max_size=4)


def fs_policy(*, deny=(), write=(), read_only=(), home="/home/u", ws="/w/project"):
    layer = Layer(
        name="builtin:test",
        trusted=True,
        base_dir=Path(ws),
        deny_read=tuple(Item(p) for p in deny),
        allow_write=tuple(Item(p) for p in write),
        read_only=tuple(Item(p) for p in read_only),
    )
    return compile_layers([layer], workspace=Path(ws), home=home)


@settings(deadline=None)
@given(COMPONENTS, COMPONENTS)
def test_matching_is_by_whole_components(rule_parts, subject_parts):
    rule = "/" + "/".join(rule_parts)
    subject = "/" + "/".join(subject_parts)
    expected_inside = subject_parts[: len(rule_parts)] == rule_parts
    assert paths.under(subject, rule) == expected_inside
    policy = fs_policy(deny=[rule])
    assert (policy.decide_read(subject).verdict == "deny") == expected_inside


def test_documented_component_examples():
    policy = fs_policy(deny=["~/.ssh"], write=["/w/project"])
    assert policy.decide_read("/home/u/.ssh").verdict == "deny"
    assert policy.decide_read("/home/u/.ssh/id_rsa").verdict == "deny"
    assert policy.decide_read("/home/u/.sshfoo").verdict == "allow"
    assert policy.decide_read("/home/u/.sshfoo/id_rsa").verdict == "allow"
    assert policy.decide_write("/w/project/src/a.c").verdict == "allow"
    assert policy.decide_write("/w/project2/a.c").verdict == "deny"
    assert policy.decide_write("/w/projec").verdict == "deny"


@settings(deadline=None)
@given(COMPONENTS, st.lists(st.sampled_from(["", ".", "zz/..", "a/b/../.."]), max_size=4))
def test_dot_dot_and_dots_are_normalised(parts, noise):
    clean = "/home/u/" + "/".join(parts)
    noisy = "/home/u/" + "/".join(
        n + "/" + p if n else p for n, p in zip(noise + [""] * 4, parts, strict=False)
    )
    policy = fs_policy(deny=["~/.ssh"])
    assert policy.decide_read(noisy).verdict == policy.decide_read(clean).verdict
    assert policy.decide_read(noisy).subject == policy.decide_read(clean).subject


def test_escaping_with_dot_dot_is_seen_through():
    policy = fs_policy(deny=["~/.ssh"], write=["/w/project"])
    assert policy.decide_read("/w/project/../../home/u/.ssh/id_rsa").verdict == "deny"
    assert policy.decide_write("/w/project/../project2/x").verdict == "deny"
    assert policy.decide_write("../project2/x").verdict == "deny"  # relative to the workspace
    assert policy.decide_write("sub/../x").verdict == "allow"


def test_tilde_expands_to_the_given_home_in_rules_and_subjects():
    policy = fs_policy(deny=["~/.aws", "~"], home="/Users/me")
    assert policy.deny_read[0] == Path("/Users/me/.aws")
    assert policy.decide_read("~/.aws/credentials").verdict == "deny"
    assert policy.decide_read("/Users/me/.aws/credentials").verdict == "deny"
    assert policy.decide_read("~/.aws/credentials").subject == "/Users/me/.aws/credentials"


@pytest.mark.parametrize("text", ["", "  ", "~root/.ssh", "~/.ssh/*", "a\x00b", "x" * 5000])
def test_unusable_paths_are_refused(text):
    assert paths.check_text(text)


# -- symlinks, with a real tree --------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    home = tmp_path / "home"
    (home / "real-ssh").mkdir(parents=True)
    (home / "real-ssh" / "id_rsa").write_text("secret")
    os.symlink(home / "real-ssh", home / ".ssh")  # ~/.ssh is a symlink
    ws = tmp_path / "ws"
    ws.mkdir()
    os.symlink(home / ".ssh", ws / "keys")  # a planted link in the workspace
    os.symlink("/etc", ws / "etc-link")
    return home, ws


def test_rules_are_resolved_through_symlinks(tree):
    home, ws = tree
    policy = effective(ws, home)
    denied = {str(p) for p in policy.deny_read}
    assert str(home / ".ssh") in denied and str(home / "real-ssh") in denied
    assert policy.decide_read(home / "real-ssh" / "id_rsa").verdict == "deny"
    assert policy.decide_read(home / ".ssh" / "id_rsa").verdict == "deny"


def test_explain_follows_a_planted_symlink_to_its_target(tree):
    home, ws = tree
    policy = effective(ws, home)
    via_link = explain(policy, "read", "keys/id_rsa", cwd=ws)
    assert via_link.verdict == "deny"
    assert via_link.rule == "filesystem.deny_read: ~/.ssh"
    assert via_link.subject == str(home / "real-ssh" / "id_rsa")
    write = explain(policy, "write", "etc-link/passwd", cwd=ws)
    assert write.verdict == "deny" and write.subject == "/etc/passwd"
    assert explain(policy, "write", "new-file", cwd=ws).verdict == "allow"


def test_workspace_is_resolved(tmp_path):
    real = tmp_path / "real-ws"
    real.mkdir()
    os.symlink(real, tmp_path / "link-ws")
    policy = effective(tmp_path / "link-ws", tmp_path)
    assert policy.workspace == real
    assert policy.allow_write[0] == real
    assert policy.decide_write(real / "a").verdict == "allow"


def test_flags_paths_are_relative_to_the_workspace(tmp_path):
    policy = effective(
        tmp_path, tmp_path, flags=Flags(deny_read=("notes",), allow_write=("/srv/x",))
    )
    assert policy.decide_read(tmp_path / "notes" / "a").rule == "--deny-read notes"
    assert policy.decide_write("/srv/x/y").rule == "--allow-write /srv/x"
