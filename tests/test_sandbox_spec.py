"""The sandbox spec and the bubblewrap command built from it (pure path logic, no sandbox)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from krate.sandbox import bwrap, hardlinks, limits
from krate.sandbox.spec import Limits, build, mount_order, protect_ancestors


@pytest.fixture
def tmp_path():
    """Outside /tmp: the sandbox's private /tmp hides host /tmp, so nothing there is masked."""
    base = Path(tempfile.mkdtemp(prefix="krate-spec-", dir="/var/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    home = Path(os.path.realpath(tmp_path)) / "home"
    ws = home / "ws"
    for d in (home / ".ssh", ws / ".git" / "hooks", home / ".config" / "gh"):
        d.mkdir(parents=True)
    (home / ".ssh" / "id").write_text("k")
    (ws / ".git" / "config").write_text("c")
    (ws / "krate.toml").write_text("")
    return home, ws


def _spec(home: Path, ws: Path, **kw):
    return build(
        argv=("make", "all"),
        cwd=ws,
        workspace=ws,
        allow_write=kw.pop("allow_write", ()),
        read_only=[ws / ".git/hooks", ws / ".git/config", ws / "krate.toml", ws / ".envrc"],
        deny_read=kw.pop("deny_read", [home / ".ssh", home / ".aws", home / ".config/gh"]),
        env={"PATH": "/usr/bin"},
        **kw,
    )


def test_only_existing_paths_are_mounted_and_declared_lists_keep_all(tmp_path):
    home, ws = _tree(tmp_path)
    spec = _spec(home, ws)
    assert spec.hidden == (home / ".ssh", home / ".config/gh")  # ~/.aws does not exist
    assert home / ".aws" in spec.declared_hidden
    assert ws / ".envrc" not in spec.read_only and ws / ".envrc" in spec.declared_read_only
    assert spec.writable == (ws,)


def test_mount_order_most_specific_wins_and_parents_are_pinned(tmp_path):
    home, ws = _tree(tmp_path)
    spec = _spec(home, ws)
    order = mount_order(spec)
    kinds = {p: k for k, p in order}
    assert kinds[ws] == "bind" and kinds[ws / ".git"] == "bind"  # pinned: cannot be renamed
    assert kinds[ws / ".git/hooks"] == "ro" and kinds[ws / "krate.toml"] == "ro"
    depths = [len(p.parts) for _, p in order]
    assert depths == sorted(depths)
    assert protect_ancestors([ws / "a/b/c"], [ws]) == [ws / "a/b", ws / "a"]


def test_paths_under_the_private_tmp_are_not_masked_unless_visible(tmp_path):
    home, ws = _tree(tmp_path)
    spec = _spec(home, ws, deny_read=["/tmp/krate-x-secret", home / ".ssh"])
    assert spec.hidden == (home / ".ssh",) or Path("/tmp/krate-x-secret").exists()


def test_hidden_folder_containing_the_workspace_keeps_the_workspace_visible(tmp_path):
    home, ws = _tree(tmp_path)
    spec = _spec(home, ws, deny_read=[home])
    assert bwrap.visible_inside(ws / "file", spec)
    assert not bwrap.visible_inside(home / ".ssh" / "id", spec)


def test_bwrap_command_has_every_isolation_flag(tmp_path):
    home, ws = _tree(tmp_path)
    spec = _spec(home, ws)
    opened: list[int] = []
    argv = bwrap.command(
        spec, "/usr/bin/bwrap", status_fd=9, fds=opened, empty=lambda: 42, seccomp=lambda: 7
    )
    joined = " ".join(argv)
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                 "--cap-drop ALL", "--ro-bind / /", "--dev /dev", "--proc /proc", "--tmpfs /tmp",
                 "--json-status-fd 9", f"--chdir {ws}", "--seccomp 7"):  # fmt: skip
        assert flag in joined, flag
    assert 7 in opened  # the launcher passes the filter's descriptor and closes it
    if bwrap.supports("/usr/bin/bwrap", "--disable-userns"):
        assert "--disable-userns" in argv
    assert "--share-net" not in argv
    assert argv[-3:] == ["--", "make", "all"]
    assert f"--tmpfs {home / '.ssh'} --remount-ro {home / '.ssh'}" in joined
    assert f"--bind {ws} {ws}" in joined and f"--ro-bind {ws / '.git/hooks'}" in joined
    # the private /tmp comes before binds under it
    assert argv.index("--tmpfs") < argv.index(str(ws))
    assert "PATH" not in joined  # environment values never on the command line


def test_hidden_file_becomes_an_empty_file_from_its_own_descriptor(tmp_path):
    home, ws = _tree(tmp_path)
    spec = _spec(home, ws, deny_read=[home / ".ssh" / "id", home / ".config"])
    fds: list[int] = []
    counter = iter(range(50, 60))
    argv = bwrap.command(
        spec, "/usr/bin/bwrap", fds=fds, empty=lambda: next(counter), seccomp=lambda: None
    )
    assert fds == [50]
    at = argv.index("--ro-bind-data")
    assert argv[at - 2 : at + 3] == [
        "--perms",
        "0444",
        "--ro-bind-data",
        "50",
        str(home / ".ssh/id"),
    ]


def test_a_hidden_path_inside_a_hidden_folder_is_not_mounted_again(tmp_path):
    # e.g. SSH_AUTH_SOCK=~/.ssh/agent.sock: bubblewrap cannot create a file in the empty
    # read-only folder that hides ~/.ssh, and the file is hidden with the folder anyway
    home, ws = _tree(tmp_path)
    (ws / "secret").write_text("s")
    spec = _spec(home, ws, deny_read=[home / ".ssh" / "id", home / ".ssh", home, ws / "secret"])
    assert spec.hidden == (home, ws / "secret")  # the workspace between shows its file again
    assert home / ".ssh" / "id" in spec.declared_hidden


def test_hardlink_scan_finds_extra_links_under_hidden_paths(tmp_path):
    home, ws = _tree(tmp_path)
    assert hardlinks.scan([home / ".ssh"]).linked == ()
    os.link(home / ".ssh" / "id", ws / "notes.txt")
    found = hardlinks.scan([home / ".ssh", home / "missing"])
    assert found.linked == (home / ".ssh" / "id",) and found.complete
    assert not hardlinks.scan([home], max_entries=2).complete


def test_hardlink_scan_ignores_links_between_hidden_names(tmp_path):
    """Applications link files inside their own (hidden) folders: not a way out."""
    home, ws = _tree(tmp_path)
    ssh = home / ".ssh"
    os.link(ssh / "id", ssh / "id.bak")
    os.link(ssh / "id", home / ".config" / "gh" / "copy")
    hidden = [ssh, home / ".config" / "gh"]
    assert hardlinks.scan(hidden).linked == ()
    # one more name outside: now it is reported, whichever hidden name was seen first
    os.link(ssh / "id", ws / "notes.txt")
    [reported] = hardlinks.scan(hidden).linked
    assert reported.name in ("id", "id.bak", "copy")
    # a hidden path listed twice, or nested in another, does not count its names twice
    assert len(hardlinks.scan([ssh, ssh, home / ".config", *hidden]).linked) == 1
    # a scan cut short cannot tell: every multiply-linked file is reported
    (ws / "notes.txt").unlink()
    assert hardlinks.scan(hidden, max_entries=2).linked != ()


def test_limits_translate_to_rlimits_and_prlimit():
    import resource

    pairs = limits.rlimit_pairs(Limits(cpu_seconds=5, memory_mb=64))
    assert (resource.RLIMIT_CPU, 5, 6) in pairs
    assert (resource.RLIMIT_DATA, 64 << 20, 64 << 20) in pairs
    assert limits.preexec(Limits()) is None
    wrapped = limits.wrap_argv(Limits(processes=7), ["make"])
    assert wrapped[1:] == ["--nproc=7:7", "--", "make"] and wrapped[0].endswith("prlimit")
