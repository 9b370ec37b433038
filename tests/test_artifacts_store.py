"""The content-addressed store: streamed hashing, atomic private writes, dedup, export."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from krate.errors import KrateError
from krate.provenance.store import BUFFER_SIZE, ArtifactStore, split_digest


@pytest.fixture
def blobs(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "data" / "artifacts")


def test_put_names_the_blob_by_the_sha256_of_its_bytes(blobs, tmp_path):
    src = tmp_path / "app.tar.gz"
    src.write_bytes(b"hello world\n" * 1000)
    stored = blobs.put_file(src)
    expected = hashlib.sha256(src.read_bytes()).hexdigest()
    shasum = subprocess.run(["sha256sum", str(src)], capture_output=True, text=True, check=True)
    assert stored.hex == expected == shasum.stdout.split()[0]
    assert stored.digest == f"sha256:{expected}" and stored.size == 12000 and stored.new
    path = blobs.root / expected
    assert path.read_bytes() == src.read_bytes()
    # Private and never modified after: read-only file in 0700 folders.
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(blobs.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(blobs.artifacts_dir.stat().st_mode) == 0o700
    assert [p.name for p in blobs.root.iterdir()] == [expected], "a temp file was left behind"


def test_identical_content_is_stored_once_and_never_rewritten(blobs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    first = blobs.put_file(a)
    inode = (blobs.root / first.hex).stat().st_ino
    second = blobs.put_file(b)
    assert first.hex == second.hex and first.new and not second.new
    assert len(list(blobs.root.iterdir())) == 1
    assert (blobs.root / first.hex).stat().st_ino == inode


def test_empty_file_is_stored(blobs, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    stored = blobs.put_file(empty)
    assert stored.hex == hashlib.sha256(b"").hexdigest() and stored.size == 0


def test_hashing_and_storing_use_constant_memory(blobs, tmp_path):
    big = tmp_path / "big.bin"
    chunk = os.urandom(1 << 20)
    with big.open("wb") as f:
        for _ in range(48):
            f.write(chunk)
    tracemalloc.start()
    try:
        stored = blobs.put_file(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == 48 << 20
    assert peak < 4 * BUFFER_SIZE, f"peak {peak} bytes: the file was not streamed"
    assert blobs.check(stored.hex, stored.size) is None


def test_a_symbolic_link_is_never_followed(blobs, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE")
    link = tmp_path / "out.txt"
    link.symlink_to(secret)
    with pytest.raises(KrateError, match="symbolic link"):
        blobs.put_file(link)
    assert not blobs.root.exists() or not any(blobs.root.iterdir())


def test_a_fifo_is_refused_without_blocking(blobs, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(KrateError, match="not a regular file"):
        blobs.put_file(fifo)


def test_check_names_missing_and_changed_blobs(blobs, tmp_path):
    src = tmp_path / "x"
    src.write_bytes(b"original")
    stored = blobs.put_file(src)
    assert blobs.check(stored.hex, stored.size) is None
    path = blobs.root / stored.hex
    path.chmod(0o600)
    path.write_bytes(b"tampered")
    assert "content changed" in blobs.check(stored.hex, stored.size)
    path.unlink()
    assert blobs.check(stored.hex, stored.size) == "missing"


def test_export_copies_verifies_and_refuses_to_overwrite(blobs, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"payload")
    stored = blobs.put_file(src)
    dest = tmp_path / "out" / "copy"
    dest.parent.mkdir()
    blobs.export(stored.digest, dest)
    assert dest.read_bytes() == b"payload"
    assert os.access(dest, os.W_OK), "the exported copy should be an ordinary file"
    dest.write_bytes(b"user's own file")
    with pytest.raises(KrateError, match="already exists"):
        blobs.export(stored.digest, dest)
    assert dest.read_bytes() == b"user's own file"
    # A dangling symlink is also "something there": never written through.
    dangling = tmp_path / "out" / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(KrateError, match="already exists"):
        blobs.export(stored.digest, dangling)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy", "link"]


def test_export_of_a_corrupted_blob_writes_nothing(blobs, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"payload")
    stored = blobs.put_file(src)
    blob = blobs.root / stored.hex
    blob.chmod(0o600)
    blob.write_bytes(b"evil")
    dest = tmp_path / "copy"
    with pytest.raises(KrateError, match="corrupt"):
        blobs.export(stored.hex, dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".copy")] == []


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("sha256:" + "a" * 64, True),
        ("A" * 64, True),
        ("sha256:" + "a" * 63, False),
        ("sha512:" + "a" * 64, False),
        ("../../etc/passwd", False),
    ],
)
def test_split_digest_accepts_only_sha256(text, ok):
    if ok:
        assert split_digest(text) == text.split(":")[-1].lower()
    else:
        with pytest.raises(KrateError):
            split_digest(text)


def test_store_path_cannot_escape_the_store(blobs):
    with pytest.raises(KrateError):
        blobs.path_for("../" + "a" * 61)
    assert blobs.path_for("b" * 64) == Path(blobs.root, "b" * 64)


def test_stale_temp_files_of_a_killed_krate_are_swept(blobs, tmp_path):
    src = tmp_path / "s"
    src.write_bytes(b"x")
    blobs.put_file(src)
    stale, fresh = blobs.root / ".tmp-dead", blobs.root / ".tmp-busy"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"being written")
    os.utime(stale, (1, 1))
    assert blobs.sweep_temps() == [".tmp-dead"]
    assert fresh.exists() and not stale.exists()
    assert list(blobs.blobs()) == [hashlib.sha256(b"x").hexdigest()]
