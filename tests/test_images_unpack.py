"""The unpacker against hostile layers: nothing lands outside the root, whatever a layer says."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from krate.errors import KrateError
from krate.images.unpack import clamp, unpack

from .image_support import (
    busybox_layer,
    config,
    d,
    entry,
    f,
    hard,
    layer,
    oci_layout,
    sym,
)


def snapshot(top: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under `top` except `skip`: what a layer must not change."""
    out = {}
    for folder, dirs, files in os.walk(top):
        if Path(folder) == skip or skip in Path(folder).parents:
            dirs[:] = []
            continue
        for name in dirs + files:
            p = Path(folder, name)
            if p == skip:
                continue
            st = p.lstat()
            body = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p)] = (st.st_mode, st.st_nlink, body)
    return out


def hostile(outside: Path) -> list[bytes]:
    """A two-layer attack on the host: every trick named in the issue, and a few more."""
    first = layer([
        d("etc"),
        d("victim"),
        f("victim/keep", b"lower"),
    ])  # fmt: skip
    second = layer([
        f("../escape", b"pwned"),  # ../ escape
        f("../../../../../../tmp/krate-escape-probe", b"pwned"),
        f(str(outside / "abs-escape"), b"pwned"),  # absolute name
        sym("out", str(outside)),  # symlink-then-write, absolute target
        f("out/through-symlink", b"pwned"),
        sym("up", "../../../../../.."),  # relative symlink climbing out
        f("up/" + str(outside)[1:] + "/through-dotdot", b"pwned"),
        sym("victim", str(outside)),  # replace a lower folder by a link, then write under it
        f("victim/keep", b"pwned"),
        hard("shadow", "/etc/shadow"),  # absolute hard link to the host's /etc/shadow
        hard("secret-link", str(outside / "secret")),
        hard("via-link", "out/secret"),
        entry("dev-null", kind=tarfile.CHRTYPE, mode=0o666, major=1, minor=3),
        entry("dev-sda", kind=tarfile.BLKTYPE, mode=0o660, major=8, minor=0),
        f("su", b"#!/bin/sh\n", 0o4755),  # setuid
        f("sg", b"#!/bin/sh\n", 0o2755),  # setgid
        d("sgid-dir", 0o2775),
        f(".wh.secret", b""),  # a whiteout naming nothing of the lower layers
        f("dir-link/.wh..wh..opq", b""),
    ])  # fmt: skip
    return [first, second]


def write_layers(tmp: Path, blobs: list[bytes]) -> list[Path]:
    out = []
    for i, blob in enumerate(blobs):
        p = tmp / f"layer{i}"
        p.write_bytes(blob)
        out.append(p)
    return out


@pytest.mark.parametrize("privileged", [True, False])
def test_hostile_layer_changes_nothing_outside_the_root(tmp_path, privileged):
    if privileged and os.geteuid() != 0:
        pytest.skip("the privileged unpack needs root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    root = tmp_path / "root"
    root.mkdir()
    layers = write_layers(tmp_path, hostile(outside))
    shadow = os.stat("/etc/shadow") if os.path.exists("/etc/shadow") else None
    before = snapshot(tmp_path, root)
    probe = Path("/tmp/krate-escape-probe")
    probe.unlink(missing_ok=True)

    report = unpack(layers, root, privileged=privileged)

    assert snapshot(tmp_path, root) == before, "a layer changed something outside the root"
    assert not probe.exists()
    if shadow is not None:
        assert os.stat("/etc/shadow").st_nlink == shadow.st_nlink
    # Clamped names landed inside.
    assert (root / "escape").read_bytes() == b"pwned"
    assert (root / "tmp/krate-escape-probe").read_bytes() == b"pwned"
    assert (root / str(outside)[1:] / "abs-escape").read_bytes() == b"pwned"
    # Writes through links went to the link's target *inside* the root.
    inside = root / str(outside)[1:]
    assert (inside / "through-symlink").read_bytes() == b"pwned"
    assert (inside / "through-dotdot").read_bytes() == b"pwned"
    assert (inside / "keep").read_bytes() == b"pwned"
    assert os.readlink(root / "victim") == str(outside)  # the link is kept, unfollowed
    # Hard links out of the root were not made.
    for name in ("shadow", "secret-link", "via-link"):
        assert not os.path.lexists(root / name), name
    assert any(s.startswith("shadow: hard link") for s in report.skipped)
    # No devices; no setuid/setgid.
    assert not os.path.lexists(root / "dev-null") and not os.path.lexists(root / "dev-sda")
    assert {"dev-null: device node", "dev-sda: device node"} <= set(report.skipped)
    for name in ("su", "sg", "sgid-dir"):
        mode = (root / name).lstat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID), name
    assert set(report.stripped) == {"su", "sg", "sgid-dir"}
    assert not any(p.name.startswith(".wh.") for p in root.rglob("*"))


def test_naive_tarfile_extraction_does_escape(tmp_path):
    """Why the unpacker exists: this Python's tarfile, unfiltered, writes outside the target."""
    if hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has extraction filters (they still reject absolute symlinks)")
    outside = tmp_path / "outside"
    outside.mkdir()
    blob = layer([f("../escape", b"pwned"), sym("out", str(outside)),
                  f("out/through", b"pwned")], compress=False)  # fmt: skip
    (tmp_path / "l.tar").write_bytes(blob)
    target = tmp_path / "naive"
    target.mkdir()
    with tarfile.open(tmp_path / "l.tar") as tar:
        tar.extractall(target)
    assert (tmp_path / "escape").exists() and (outside / "through").exists()


def test_whiteouts_remove_lower_entries_only(tmp_path):
    lower = layer([
        d("etc"), f("etc/a", b"a"), f("etc/b", b"b"),
        d("opt"), f("opt/old1", b"1"), d("opt/sub"), f("opt/sub/old2", b"2"),
        f("gone", b"x"),
    ])  # fmt: skip
    upper = layer([
        f(".wh.gone"),
        f("etc/.wh.a"),
        d("opt"), f("opt/new-before", b"n"),
        f("opt/.wh..wh..opq"),
        f("opt/new-after", b"n"),
        f("etc/c", b"c"), f("etc/.wh.c"),  # a whiteout spares its own layer's entries
    ])  # fmt: skip
    root = tmp_path / "root"
    root.mkdir()
    unpack(write_layers(tmp_path, [lower, upper]), root)
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["b", "c"]
    assert sorted(p.name for p in (root / "opt").iterdir()) == ["new-after", "new-before"]
    assert not (root / "gone").exists()


def test_modes_last_links_and_owners_recorded_unprivileged(tmp_path):
    blob = layer([
        d("ro", 0o555), f("ro/file", b"x", 0o444),
        d("home"), d("home/app", 0o750, uid=1000, gid=1000),
        f("home/app/.profile", b"p", uid=1000, gid=1000),
        f("data", b"same"), hard("data-link", "/data"),
        sym("localtime", "/usr/share/zoneinfo/UTC"),  # a legitimate absolute symlink
        hard("dir-link", "home"),
    ])  # fmt: skip
    root = tmp_path / "root"
    root.mkdir()
    report = unpack(write_layers(tmp_path, [blob]), root, privileged=False)
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    assert (root / "ro/file").read_bytes() == b"x"
    assert stat.S_IMODE((root / "home/app").stat().st_mode) == 0o750
    assert (root / "data").stat().st_ino == (root / "data-link").stat().st_ino
    assert os.readlink(root / "localtime") == "/usr/share/zoneinfo/UTC"
    assert not os.path.lexists(root / "dir-link")
    assert report.owners == {"home/app": [1000, 1000], "home/app/.profile": [1000, 1000]}
    os.chmod(root / "ro", 0o755)


def test_zstd_is_refused_clearly_without_the_stdlib_module(tmp_path):
    if sys.version_info >= (3, 14):
        pytest.skip("this Python reads zstd")
    (tmp_path / "l").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 32)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(KrateError, match="zstd.*Python 3.14"):
        unpack([tmp_path / "l"], root)


def test_garbage_layer_is_a_clear_error(tmp_path):
    (tmp_path / "l").write_bytes(b"\x1f\x8bnot really gzip")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(KrateError, match="cannot be unpacked"):
        unpack([tmp_path / "l"], root)


def test_clamp():
    assert clamp("../../a/./b/../c") == ["a", "c"]
    assert clamp("/etc/shadow") == ["etc", "shadow"]
    assert clamp("./") == []


def tree(root: Path) -> dict[str, tuple]:
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder, name)
            st = p.lstat()
            kind = stat.S_IFMT(st.st_mode)
            extra = None
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            out[str(p.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode), extra)
    return out


@pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")),
    reason="skopeo and umoci are not installed (scripts/install --dev)",
)
def test_same_tree_as_skopeo_and_umoci(tmp_path):
    base = busybox_layer()
    upper = layer([
        d("etc"), f("etc/.wh.passwd"), f("etc/motd", b"hi\n"),
        d("srv"), f("srv/.wh..wh..opq"), f("srv/data", b"d", 0o600),
        hard("bin/hl", "bin/busybox"), f("bin/su", b"x", 0o4755),
    ])  # fmt: skip
    layers = [base, upper]
    layout = tmp_path / "layout"
    oci_layout(layout, layers, config(layers))
    copied = tmp_path / "copied"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:1.0", f"oci:{copied}:1.0"],
                   check=True, capture_output=True)  # fmt: skip
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{copied}:1.0", str(bundle)],
                   check=True, capture_output=True)  # fmt: skip
    ours = tmp_path / "ours"
    ours.mkdir()
    unpack(write_layers(tmp_path, layers), ours, privileged=False)
    theirs = tree(bundle / "rootfs")
    mine = tree(ours)
    # umoci keeps setuid bits where krate strips them (docs/images.md): compare without them.
    theirs = {k: (t, m & ~0o6000, x) for k, (t, m, x) in theirs.items()}
    assert mine == theirs
    assert json.loads((bundle / "config.json").read_text())["process"]["cwd"] == "/"


def test_image_user_is_read_from_the_image_never_the_host(tmp_path):
    """An image's etc/passwd that is a link to /etc/passwd must not read the host's."""
    from krate.images.runtime import user_of

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/etc/passwd", root / "etc/passwd")  # a loop inside the image
    (root / "home/app").mkdir(parents=True)
    with pytest.raises(KrateError, match="does not name"):
        user_of(root, "root", "img")  # the host's passwd names root; the image's does not
    os.unlink(root / "etc/passwd")
    os.symlink("../../../../../../etc/group-of-image", root / "etc/passwd")
    (root / "etc/group-of-image").write_text("app:x:1000:1000::/home/app:/bin/sh\n")
    assert user_of(root, "app", "img") == (1000, 1000, "/home/app")
    assert user_of(root, "", "img") == (0, 0, "/")  # no root entry, no /root: HOME=/
    assert user_of(root, "42:7", "img") == (42, 7, "/")
