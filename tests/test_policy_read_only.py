"""Files that run later outside the sandbox, broad workspaces and allow_write through symlinks,
as the compiled policy sees them (`krate policy explain` answers what the sandbox does)."""

from __future__ import annotations

from pathlib import Path

from krate.policy import Flags, effective_policy
from krate.policy.builtin import GIT_READ_ONLY, SHELL_STARTUP, WORKSPACE_READ_ONLY
from krate.runs import broad_workspace

DOCS = Path(__file__).resolve().parent.parent / "docs" / "policy.md"


def _policy(ws: Path, home: Path, **flags):
    return effective_policy(
        workspace=ws, home=home, user_policy_path=home / "none", trusted={}, flags=Flags(**flags)
    )


def test_docs_list_every_builtin_read_only_entry():
    text = DOCS.read_text()
    for entry in (*WORKSPACE_READ_ONLY, *SHELL_STARTUP):
        assert f"`{entry}`" in text, f"docs/policy.md does not list `{entry}`"


def test_git_files_and_shell_startup_files_are_read_only(tmp_path):
    home, ws = tmp_path, tmp_path / "src" / "app"
    ws.mkdir(parents=True)
    policy = _policy(ws, home)
    for name in GIT_READ_ONLY:
        assert policy.decide_write(ws / ".git" / name / "x").verdict == "deny", name
    for fine in ("objects/ab/cd", "index", "index.lock", "HEAD", "refs/heads/main", "logs/HEAD",
                 "packed-refs", "FETCH_HEAD", "ORIG_HEAD", "COMMIT_EDITMSG"):  # fmt: skip
        assert policy.decide_write(ws / ".git" / fine).verdict == "allow", fine
    for name in SHELL_STARTUP:
        decision = policy.decide_write(home / name)
        assert decision.verdict == "deny", name  # outside the workspace anyway ...
    wide = _policy(ws, home, allow_write=(str(home),))
    for name in SHELL_STARTUP:
        decision = wide.decide_write(home / name)
        assert (decision.verdict, decision.layer) == ("deny", "builtin:default"), name
    assert wide.decide_write(home / "notes.txt").verdict == "allow"


def test_startup_files_at_the_top_of_any_writable_folder_are_read_only(tmp_path):
    home, ws, other = tmp_path / "home", tmp_path / "ws", tmp_path / "dotfiles"
    for folder in (home, ws, other):
        folder.mkdir()
    (other / ".zshrc").write_text("# mine\n")
    (ws / ".bashrc").symlink_to(other / ".zshrc")
    policy = _policy(ws, home, allow_write=(str(other),))
    for path in (other / ".zshrc", ws / ".bashrc"):
        decision = policy.decide_write(path)
        assert decision.verdict == "deny", path
        assert decision.rule.endswith("is read-only in every writable folder")
    assert policy.decide_write(other / ".profile").verdict == "allow"  # only existing ones
    assert Path(other / ".zshrc") in policy.read_only


def test_allow_write_through_a_symlink_is_recorded_with_its_target(tmp_path):
    home, ws = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    ws.mkdir()
    (ws / "dist").symlink_to(home)
    (ws / "build").mkdir()
    (ws / "out").symlink_to("build")
    policy = _policy(ws, home, allow_write=("dist", "out", str(home / "real")))
    links = {link.literal: link for link in policy.write_links}
    assert set(links) == {str(ws / "dist"), str(ws / "out")}
    assert links[str(ws / "dist")].path == str(home)
    assert links[str(ws / "dist")].rule == "--allow-write dist"
    assert links[str(ws / "dist")].layer == "flags"


def test_broad_workspaces(tmp_path):
    home = tmp_path / "home" / "alice"
    (home / "src").mkdir(parents=True)

    def why(ws: Path, **flags):
        return broad_workspace(_policy(ws, home, **flags), ws)

    assert why(Path("/")) == "is the root folder"
    assert why(home) == "is your home folder"
    assert why(tmp_path / "home") == f"holds your home folder {home}"
    assert why(home / "src") is None
    assert why(home / "src", deny_read=("secrets",)) is None  # the user's own hidden paths
    # home reached through a symlink: the literal secret stores count too
    real = tmp_path / "data" / "alice"
    (real / ".ssh").mkdir(parents=True)
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "alice").symlink_to(real)
    policy = _policy(tmp_path / "link", tmp_path / "link" / "alice")
    assert broad_workspace(policy, tmp_path / "link") is not None
