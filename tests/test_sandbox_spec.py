"""The sandbox spec and the bubblewrap command built from it (pure path logic, no sandbox)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from krate.sandbox import bwrap, hardlinks, identity, limits
from krate.sandbox.backend import named
from krate.sandbox.spec import Limits, build, mount_order, protect_ancestors

BWRAP = named("bubblewrap", "bwrap")
SEATBELT = named("seatbelt", "sandbox-exec")


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
    counter = iter(range(50, 80))
    argv = bwrap.command(
        spec, "/usr/bin/bwrap", fds=fds, empty=lambda: next(counter), seccomp=lambda: None
    )
    # one descriptor each: the /proc files masked on this host, then the hidden file
    masked = [p for p in bwrap.PROC_MASKED if os.path.lexists(p)]
    assert fds == list(range(50, 51 + len(masked)))
    data = [i for i, arg in enumerate(argv) if arg == "--ro-bind-data"]
    assert [argv[i + 2] for i in data] == [*masked, str(home / ".ssh/id")]
    at = data[-1]
    assert argv[at - 2 : at + 3] == ["--perms", "0444", "--ro-bind-data", str(fds[-1]),
                                     str(home / ".ssh/id")]  # fmt: skip


def test_proc_knobs_are_read_only_and_leak_files_masked_after_the_fresh_proc(tmp_path):
    home, ws = _tree(tmp_path)
    argv = bwrap.command(_spec(home, ws), "/usr/bin/bwrap", fds=[], empty=lambda: 9)
    proc = argv.index("--proc")
    ro = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--ro-bind" and i > proc]
    expected = [p for p in bwrap.PROC_READ_ONLY if p == "/proc/sys" or os.path.lexists(p)]
    assert ro[: len(expected)] == expected and "/proc/sys" in expected
    assert all(argv[argv.index(p) - 1] == "--ro-bind" for p in expected)
    assert argv.index("/proc/sys") > proc


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


# ---------------------------------------------------------------- identity (root runs)


def test_identity_choice_for_root_and_for_everyone_else(tmp_path):
    ws = Path(os.path.realpath(tmp_path))
    assert identity.choose(ws, ws, as_root=True, euid=1000, backend=BWRAP) == (
        identity.Choice()
    )  # --as-root means nothing without root
    chosen = identity.choose(ws, ws, as_root=True, euid=0, backend=BWRAP)
    assert chosen.run_as is None and chosen.refusal is None and chosen.record == {"as_root": True}
    assert chosen.decision == {"area": "identity", "verdict": "allow", "rule": "--as-root",
                               "layer": "flags", "subject": "root"}  # fmt: skip
    root_owned = identity.choose(Path("/"), Path("/"), as_root=False, euid=0, backend=BWRAP)
    assert root_owned.refusal.exit_code == 125 and root_owned.decision["verdict"] == "deny"
    assert "belongs to root" in str(root_owned.refusal) and "--as-root" in str(root_owned.refusal)
    seatbelt = identity.choose(ws, ws, as_root=False, euid=0, backend=SEATBELT)
    assert seatbelt.refusal is not None and seatbelt.run_as is None


def test_identity_reaches_only_what_the_mode_bits_open_to_it(tmp_path):
    base = Path(os.path.realpath(tmp_path))
    base.chmod(0o755)
    gid = base.stat().st_gid
    stranger = identity.Identity("stranger", 54321, 54321, (54321,))
    member = stranger._replace(groups=(54321, gid))
    for name, mode in (("open", 0o755), ("closed", 0o700), ("group", 0o750), ("other", 0o701)):
        (base / name / "x").mkdir(parents=True)
        (base / name).chmod(mode)
    assert stranger.reaches(base / "open" / "x") and stranger.reaches(base / "other" / "x")
    assert not stranger.reaches(base / "closed" / "x")
    assert not stranger.reaches(base / "group" / "x")
    assert member.reaches(base / "group" / "x")
    assert not member.reaches(base / "other" / "x")  # its group class has no search bit
    assert stranger.reaches(base / "closed") and not stranger.reaches(base / "closed", inside=True)


def test_hidden_paths_the_owner_cannot_reach_get_no_mount(tmp_path):
    tmp_path.chmod(0o755)
    home, ws = _tree(tmp_path)
    (home / ".config").chmod(0o700)
    owner = identity.Identity("owner", 54321, 54321, (54321,))
    spec = _spec(home, ws)._replace(run_as=owner)
    joined = " ".join(bwrap.command(spec, "/usr/bin/bwrap", fds=[], empty=lambda: 9))
    assert f"--tmpfs {home / '.ssh'}" in joined  # reachable: hidden by a mount
    assert str(home / ".config" / "gh") not in joined  # closed to the owner: nothing to hide
    mapped = identity.home_equivalents((home / ".ssh", Path("/etc/x")), home, owner._replace(
        home=Path("/home/owner")))  # fmt: skip
    assert mapped == [Path("/home/owner/.ssh")]


def test_hardlink_scan_checks_files_past_the_entry_cap(tmp_path):
    """A link placed after the cap was never looked at: a big hidden folder let it through."""
    home, ws = _tree(tmp_path)
    for i in range(20):
        (home / ".ssh" / f"other{i}").write_text("")
    os.link(home / ".ssh" / "id", ws / "notes.txt")
    for cap in (0, 5, 100):
        found = hardlinks.scan([home / ".ssh"], max_entries=cap)
        assert home / ".ssh" / "id" in found.linked, cap
        assert found.complete == (cap == 100)
    (ws / "notes.txt").unlink()
    assert hardlinks.scan([home / ".ssh"], max_entries=0).linked == ()


def test_writable_tmpfs_mounts_are_no_bigger_than_the_memory_limit(tmp_path):
    home, ws = _tree(tmp_path)
    spec = _spec(home, ws)._replace(limits=Limits(memory_mb=64))
    argv = bwrap.command(spec, "/usr/bin/bwrap", empty=lambda: 42)
    if not bwrap.supports("/usr/bin/bwrap", "--size"):
        pytest.skip("this bubblewrap has no --size")
    size = str(64 << 20)
    at = argv.index("/tmp")
    assert argv[at - 3 : at] == ["--size", size, "--tmpfs"]
    assert argv.count("--size") == 1 + sum(
        os.path.isdir(d) and not os.path.islink(d) for d in ("/run", "/var/run")
    )
    # hidden folders are read-only tmpfs: no size needed; no limit, no size
    assert argv[argv.index(str(home / ".ssh")) - 1] == "--tmpfs"
    assert "--size" not in bwrap.command(_spec(home, ws), "/usr/bin/bwrap", empty=lambda: 42)


def _fake_cgroups(tmp_path: Path, mountinfo: str, membership: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "self" / "cgroup").write_text(membership)
    return proc


def test_cgroup_place_is_the_nearest_usable_ancestor(tmp_path):
    from krate.sandbox import cgroup

    v2 = tmp_path / "unified"
    user = v2 / "user.slice" / "user-1000.slice"
    own = user / "user@1000.service" / "app.slice" / "term.scope"
    own.mkdir(parents=True)
    enabled = {v2: "cpu memory pids", user: "memory pids", own.parent.parent: "memory pids"}
    enabled[own.parent] = "pids"
    for folder, controllers in enabled.items():
        (folder / "cgroup.subtree_control").write_text(controllers + "\n")
    v1 = tmp_path / "memory"
    (v1 / "job").mkdir(parents=True)
    mountinfo = (
        f"35 31 0:32 / {v1} rw,relatime - cgroup cgroup rw,memory\n"
        f"41 31 0:38 / {v2} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    membership = (
        "4:memory:/job\n0::/user.slice/user-1000.slice/user@1000.service/app.slice/term.scope\n"
    )
    proc = _fake_cgroups(tmp_path, mountinfo, membership)
    delegated = own.parent.parent  # user@1000.service: the user's own, memory enabled

    def mine(folder: Path) -> bool:
        return folder in (delegated, own.parent, own, v1 / "job")

    assert cgroup.find(proc, mine) == cgroup.Place(2, delegated)
    # a login session outside the delegated subtree: nothing in v2; v1 as a fallback
    assert cgroup.find(proc, lambda f: f == v1 / "job") == cgroup.Place(1, v1 / "job")
    assert cgroup.find(proc, lambda f: False) is None
    # root may use the top of the v2 hierarchy
    assert cgroup.find(proc, lambda f: True) == cgroup.Place(2, delegated)
    (delegated / "cgroup.subtree_control").write_text("pids\n")
    assert cgroup.find(proc, lambda f: True) == cgroup.Place(2, user)
    # a mount whose root does not hold krate's cgroup (another cgroup namespace): unusable
    proc = _fake_cgroups(tmp_path / "ns", mountinfo.replace(" / ", " /elsewhere ", 1), membership)
    assert cgroup.find(proc, lambda f: f == v1 / "job") is None


PATHS = ["/", "/a", "/a/b", "/a/bc", "/ab", "//a", "//a/b", "a", "a/b", ".", "/a/b/c", "/b/a"]


@pytest.mark.parametrize("root", PATHS)
@pytest.mark.parametrize("path", PATHS)
def test_is_within_answers_as_the_parents_do(path: str, root: str) -> None:
    """is_within compares parts (start-up: no Path per parent); the answer stays the old one."""
    from krate.sandbox.spec import is_within

    p, r = Path(path), Path(root)
    assert is_within(p, r) == (p == r or r in p.parents)
