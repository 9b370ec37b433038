"""Path resolution and permissions (pure path logic, on pyfakefs)."""

from __future__ import annotations

import os
import stat

import pytest

from krate import paths as kpaths
from krate.errors import StoreError
from krate.paths import Paths, ensure_private_dir, make_private_file


def test_krate_home_overrides_both_folders():
    p = Paths.from_env({"KRATE_HOME": "/x/y"})
    assert p.data_dir == p.config_dir
    assert str(p.data_dir) == "/x/y" and p.db_path.name == "krate.db"


def test_platform_folders_without_krate_home(monkeypatch):
    import platformdirs

    p = Paths.from_env({})
    assert str(p.data_dir) == platformdirs.user_data_dir("krate", appauthor=False)
    assert str(p.config_dir) == platformdirs.user_config_dir("krate", appauthor=False)


@pytest.mark.parametrize(
    "env",
    [
        {"HOME": "/home/u"},
        {"HOME": "/home/u/", "XDG_DATA_HOME": "/d", "XDG_CONFIG_HOME": "/c"},
        {"HOME": "/home/u", "XDG_DATA_HOME": "relative", "XDG_CONFIG_HOME": ""},
        {"HOME": "relative"},
        {"HOME": "/"},
        {},
    ],
)
def test_platform_folders_follow_platformdirs_without_importing_it(monkeypatch, env):
    """krate needs them before its lockdown, when no third-party package may load."""
    import platformdirs

    for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "KRATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    p = Paths.from_env(env)
    assert str(p.data_dir) == platformdirs.user_data_dir("krate", appauthor=False)
    assert str(p.config_dir) == platformdirs.user_config_dir("krate", appauthor=False)


def test_private_dir_created_0700_whatever_the_umask(fs):
    old = os.umask(0)
    try:
        ensure_private_dir(kpaths.Path("/data/krate"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat("/data/krate").st_mode) == 0o700


def test_existing_loose_dir_is_tightened(fs):
    fs.create_dir("/data/krate", perm_bits=0o755)
    ensure_private_dir(kpaths.Path("/data/krate"))
    assert stat.S_IMODE(os.stat("/data/krate").st_mode) == 0o700


def test_loose_file_is_tightened(fs):
    fs.create_file("/data/krate/krate.db", st_mode=stat.S_IFREG | 0o644)
    make_private_file(kpaths.Path("/data/krate/krate.db"))
    assert stat.S_IMODE(os.stat("/data/krate/krate.db").st_mode) == 0o600


def test_a_file_in_the_way_is_a_clear_error(fs):
    fs.create_file("/data/krate")
    with pytest.raises(StoreError, match="exists but is not a folder"):
        ensure_private_dir(kpaths.Path("/data/krate"))
