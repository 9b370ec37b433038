"""Unpacked image roots: derived, disposable folders keyed by config digest.

`<data>/images/roots/<config hex>/rootfs` is the tree, `meta.json` beside it says how it
was made (layers, what was skipped or stripped, owners recorded when unpacked without
root). Each is unpacked into a temp folder and renamed into place, so a killed unpack
leaves nothing a run would use; deleting one loses nothing (the next run unpacks again).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from krate import sha
from krate.errors import KrateError
from krate.images import blobs
from krate.images.model import Image, parse_config
from krate.paths import Paths, ensure_private_dir
from krate.provenance.store import split_digest

ROOTFS = "rootfs"
META = "meta.json"
TEMP_PREFIX = ".tmp-"
STALE_S = 24 * 3600


def roots_dir(paths: Paths) -> Path:
    return paths.image_roots


def folder_of(paths: Paths, config_digest: str) -> Path:
    return roots_dir(paths) / split_digest(config_digest)


def rootfs_of(paths: Paths, config_digest: str) -> Path | None:
    """The unpacked tree when it is there (a cheap check for the run path), else None."""
    folder = folder_of(paths, config_digest)
    if (folder / META).is_file() and (folder / ROOTFS).is_dir():
        return folder / ROOTFS
    return None


def _layer_paths(paths: Paths, image: Image) -> list[Path]:
    out = []
    for digest in image.layer_digests:
        if not blobs.has(paths, digest):
            raise KrateError(
                f"layer {digest} of {image.ref} is missing from the store; "
                f"run `krate image verify {image.ref}`, then import or pull it again"
            )
        out.append(blobs.path(paths, digest))
    return out


def _diff_ids(paths: Paths, image: Image) -> list[str]:
    _, _, diff_ids = parse_config(blobs.read_bytes(paths, image.config_digest))
    return diff_ids


def _unpack_into(paths: Paths, image: Image, parent: Path) -> tuple[Path, dict]:
    from krate.images.unpack import unpack

    rootfs = parent / ROOTFS
    rootfs.mkdir(mode=0o755)
    report = unpack(_layer_paths(paths, image), rootfs, diff_ids=_diff_ids(paths, image))
    meta = {
        "config": image.config_digest,
        "layers": image.layer_digests,
        "entries": report.entries,
        "skipped": report.skipped,
        "stripped": report.stripped,
        "owners": report.owners,
        "privileged": os.geteuid() == 0,
    }
    return rootfs, meta


def ensure(paths: Paths, image: Image) -> Path:
    """The image's unpacked root, unpacking it first when it is not there yet."""
    found = rootfs_of(paths, image.config_digest)
    if found is not None:
        return found
    ensure_private_dir(paths.data_dir / "images")
    parent = ensure_private_dir(roots_dir(paths))
    sweep(parent)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
    try:
        _, meta = _unpack_into(paths, image, tmp)
        (tmp / META).write_text(json.dumps(meta, indent=1))
        os.chmod(tmp / META, 0o600)
        final = folder_of(paths, image.config_digest)
        try:
            os.rename(tmp, final)
        except OSError:
            if rootfs_of(paths, image.config_digest) is None:
                raise
            remove_tree(tmp)  # another krate unpacked the same image meanwhile
    except BaseException:
        remove_tree(tmp)
        raise
    found = rootfs_of(paths, image.config_digest)
    assert found is not None
    return found


def sweep(parent: Path, older_than_s: float = STALE_S) -> None:
    """Remove unpacks a killed krate left half done (old enough not to be in progress)."""
    import time

    limit = time.time() - older_than_s
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if (
                entry.name.startswith(TEMP_PREFIX)
                and entry.stat(follow_symlinks=False).st_mtime < limit
            ):
                remove_tree(Path(entry.path))


def remove_tree(path: Path) -> None:
    """Remove an unpacked tree, read-only folders included, never following a link."""
    if not os.path.lexists(path):
        return
    for folder, dirs, _ in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                p = os.path.join(folder, name)
                if stat.S_ISDIR(os.lstat(p).st_mode):
                    os.chmod(p, 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def remove(paths: Paths, config_digest: str) -> bool:
    folder = folder_of(paths, config_digest)
    existed = os.path.lexists(folder)
    remove_tree(folder)
    return existed


def meta(paths: Paths, config_digest: str) -> dict | None:
    try:
        return json.loads((folder_of(paths, config_digest) / META).read_text())
    except (OSError, ValueError):
        return None


def tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, sha256 or link target) of every entry under `root`."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            st = os.lstat(p)
            extra = None
            if stat.S_ISREG(st.st_mode):
                digest = sha.sha256()
                try:
                    with open(os.open(p, os.O_RDONLY | os.O_NOFOLLOW), "rb") as reader:
                        while chunk := reader.read(1 << 20):
                            digest.update(chunk)
                    extra = digest.hexdigest()
                except PermissionError:
                    extra = "unreadable"
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            kind, mode = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
            out[os.path.relpath(p, root)] = (kind, mode, extra)
    return out


def verify(paths: Paths, image: Image) -> list[str]:
    """Differences between the unpacked root and a fresh unpack of the layers (max 20)."""
    current = rootfs_of(paths, image.config_digest)
    if current is None:
        return []
    parent = ensure_private_dir(roots_dir(paths))
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
    try:
        fresh, _ = _unpack_into(paths, image, tmp)
        want, have = tree(fresh), tree(current)
    finally:
        remove_tree(tmp)
    problems = []
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            problems.append(f"{name}: missing from the unpacked root")
        elif name not in want:
            problems.append(f"{name}: not in the image's layers")
        elif want[name] != have[name]:
            problems.append(f"{name}: differs from the image's layers")
        if len(problems) >= 20:
            break
    return problems
