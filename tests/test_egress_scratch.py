"""egress/scratch.py: the run's socket folder and the proxy's error file, made as tempfile
would make them (same place, private, exclusive), without importing tempfile or shutil."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from krate.egress import scratch


def tempfile_choice(env: dict[str, str], cwd) -> str:
    """Where tempfile itself puts a folder under `env`, in a fresh interpreter."""
    code = "import tempfile, os; d = tempfile.mkdtemp(); os.rmdir(d); print(os.path.dirname(d))"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def scratch_choice(env: dict[str, str], cwd) -> str:
    code = (
        "import os, sys; from krate.egress import scratch; d = scratch.make_folder('krate-t-'); "
        "print(oct(os.stat(d).st_mode & 0o777), d.parent, 'tempfile' in sys.modules); os.rmdir(d)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("variable", ["TMPDIR", "TEMP", "TMP", None])
def test_the_folder_goes_where_tempfile_puts_it_private_and_without_tempfile(tmp_path, variable):
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    if variable:
        env[variable] = str(chosen)
    mode, parent, loaded = scratch_choice(env, tmp_path).split()
    assert parent == tempfile_choice(env, tmp_path)
    assert (parent == str(chosen)) == (variable is not None)
    assert mode == "0o700" and loaded == "False"


def test_an_unusable_folder_is_skipped_as_tempfile_skips_it(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path / "missing"), TEMP=str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")
    parent = scratch_choice(env, tmp_path).split()[1]
    assert parent == tempfile_choice(env, tmp_path) == "/tmp"


def test_an_existing_name_is_never_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    names = iter([b"\x00" * 8, b"\x00" * 8, b"\x01" * 8])
    monkeypatch.setattr(scratch.os, "urandom", lambda n: next(names))
    first = scratch.make_folder("p-")
    second = scratch.make_folder("p-")
    assert first != second and first.name == "p-" + "00" * 8 and second.name == "p-" + "01" * 8


def test_the_error_file_has_no_name_and_the_copy_is_new_and_private(tmp_path):
    errors = scratch.unlinked_file(tmp_path, "proxy-errors")
    errors.write(b"proxy: cannot bind")
    errors.seek(0)
    assert errors.read() == b"proxy: cannot bind" and os.listdir(tmp_path) == []
    errors.close()
    source = tmp_path / "source"
    source.write_bytes(b"x" * 200_000)
    scratch.copy(source, tmp_path / "copy", 0o644)
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o644
    with pytest.raises(FileExistsError):  # never written through an existing name (a link)
        scratch.copy(source, tmp_path / "copy", 0o600)


def test_remove_takes_the_folder_and_anything_unexpected_in_it(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "proxy.sock").write_text("")
    scratch.remove(folder)
    assert not folder.exists()
    folder.mkdir()
    (folder / "nested").mkdir()  # not made by krate: shutil.rmtree takes over
    (folder / "nested" / "f").write_text("")
    scratch.remove(folder)
    assert not folder.exists()
    scratch.remove(folder)  # already gone: nothing to do


def test_clean_stale_removes_only_the_folders_of_dead_krates_of_this_user(tmp_path):
    """A krate killed with its proxy leaves its socket folder; the next run removes it."""
    from krate.egress import DIR_PREFIX, clean_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{DIR_PREFIX}{dead.pid}-abc"
    alive = tmp_path / f"{DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / "krate-other-1"
    for folder in (stale, alive, other):
        folder.mkdir()
        (folder / "proxy.sock").write_text("")
    clean_stale(str(tmp_path))
    assert not stale.exists() and alive.exists() and other.exists()
    clean_stale(str(tmp_path / "missing"))  # no such folder: nothing to do
