"""Path resolution (literal folders per platform) and permissions (on a real folder)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from krate.errors import StoreError
from krate.paths import Paths, ensure_private_dir, make_private_file


def test_krate_home_overrides_both_folders():
    p = Paths.from_env({"KRATE_HOME": "/x/y", "XDG_DATA_HOME": "/d", "HOME": "/home/u"})
    assert p == Paths(Path("/x/y"), Path("/x/y"))
    assert p.db_path == Path("/x/y/krate.db")


def test_a_relative_krate_home_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Paths.from_env({"KRATE_HOME": "k"}).data_dir == tmp_path / "k"


LINUX = [
    ({"HOME": "/home/u"}, "/home/u/.local/share/krate", "/home/u/.config/krate"),
    (
        {"HOME": "/home/u/", "XDG_DATA_HOME": "/d", "XDG_CONFIG_HOME": "/c"},
        "/d/krate",
        "/c/krate",
    ),
    # XDG variables that are not absolute paths are ignored, as the spec says
    (
        {"HOME": "/home/u", "XDG_DATA_HOME": "relative", "XDG_CONFIG_HOME": ""},
        "/home/u/.local/share/krate",
        "/home/u/.config/krate",
    ),
    ({"HOME": "/"}, "/.local/share/krate", "/.config/krate"),
]


@pytest.mark.parametrize("env, data, config", LINUX)
def test_linux_follows_the_xdg_rules(monkeypatch, env, data, config):
    monkeypatch.setattr(sys, "platform", "linux")
    assert Paths.from_env(env) == Paths(Path(data), Path(config))


@pytest.mark.parametrize("env", [{"HOME": "relative"}, {}])
def test_without_an_absolute_home_the_password_database_decides(monkeypatch, env):
    monkeypatch.setattr(sys, "platform", "linux")
    home = pwd.getpwuid(os.getuid()).pw_dir.rstrip("/") or ""
    assert Paths.from_env(env) == Paths(
        Path(f"{home}/.local/share/krate"), Path(f"{home}/.config/krate")
    )


@pytest.mark.parametrize(
    "env",
    [{"HOME": "/Users/u"}, {"HOME": "/Users/u/", "XDG_DATA_HOME": "rel"}],
)
def test_macos_uses_application_support(monkeypatch, env):
    monkeypatch.setattr(sys, "platform", "darwin")
    folder = Path("/Users/u/Library/Application Support/krate")
    assert Paths.from_env(env) == Paths(folder, folder)


def test_macos_honours_an_absolute_xdg_folder_like_platformdirs(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    env = {"HOME": "/Users/u", "XDG_DATA_HOME": "/d", "XDG_CONFIG_HOME": "/c"}
    assert Paths.from_env(env) == Paths(Path("/d/krate"), Path("/c/krate"))


def _in_a_child(umask: int, body: str) -> None:
    """Run `body` in a fresh interpreter under a real umask (the test process's is shared)."""
    code = f"import os\nos.umask({umask:#o})\n" + textwrap.dedent(body)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_private_dir_created_0700_whatever_the_umask(tmp_path, umask):
    target = tmp_path / "a" / "krate"
    _in_a_child(
        umask,
        f"""
        from pathlib import Path
        from krate.paths import ensure_private_dir
        ensure_private_dir(Path({str(target)!r}))
        """,
    )
    assert _mode(target) == 0o700


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_store_is_0700_and_its_files_0600_whatever_the_umask(tmp_path, umask):
    home = tmp_path / "a" / "home"
    _in_a_child(
        umask,
        f"""
        from pathlib import Path
        from krate.paths import Paths
        from krate.store.connection import open_store
        open_store(Paths.from_env({{"KRATE_HOME": {str(home)!r}}}))
        """,
    )
    assert _mode(home) == 0o700
    files = [p for p in home.rglob("*")]
    assert home / "krate.db" in files
    for path in files:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_existing_loose_dir_is_tightened(tmp_path):
    loose = tmp_path / "krate"
    loose.mkdir()
    loose.chmod(0o755)
    ensure_private_dir(loose)
    assert _mode(loose) == 0o700


def test_loose_file_is_tightened(tmp_path):
    db = tmp_path / "krate.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    make_private_file(db)
    assert _mode(db) == 0o600


def test_a_file_in_the_way_is_a_clear_error(tmp_path):
    (tmp_path / "krate").write_text("")
    with pytest.raises(StoreError, match="exists but is not a folder"):
        ensure_private_dir(tmp_path / "krate")
