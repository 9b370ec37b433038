"""`krate image import|list|show|rm|verify` with real archives, a real store and real blobs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from .conftest import chown_tree, run_krate
from .image_support import (
    busybox_layer,
    config,
    d,
    docker_archive,
    f,
    layer,
    oci_layout,
    sha,
    sym,
    tar_folder,
)


def busybox_image(**cfg):
    layers = [busybox_layer()]
    return layers, config(layers, **cfg)


def test_import_oci_layout_folder_then_list_show_verify(cli, krate_home, tmp_path):
    layers, cfg = busybox_image(cmd=["sh"], workdir="/srv")
    layout = tmp_path / "bb"
    manifest = oci_layout(layout, layers, cfg, ref="1.0")
    r = cli("image", "import", str(layout))
    assert r.code == 0, r
    assert f"imported bb:1.0  {sha(cfg)}" in r.out
    listed = json.loads(cli("image", "list", "--json").out)
    assert [(i["ref"], i["config_digest"], i["manifest_digest"]) for i in listed] == [
        ("bb:1.0", sha(cfg), manifest)
    ]
    shown = json.loads(cli("image", "show", "bb:1.0", "--json").out)
    assert shown["config"] == {
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["sh"], "WorkingDir": "/srv"
    }  # fmt: skip
    rootfs = Path(shown["rootfs"])
    assert (rootfs / "bin/busybox").stat().st_size > 100_000
    assert os.readlink(rootfs / "bin/sh") == "busybox"
    # Derived and private: the roots folder is 0700, keyed by config digest.
    assert rootfs.parent.name == sha(cfg)[7:]
    for p in (rootfs.parent, rootfs.parent.parent, krate_home / "images"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    assert cli("image", "verify").code == 0
    events = json.loads(cli("audit", "list", "--json").out)
    assert [e["kind"] for e in events] == ["image.imported"]
    assert events[0]["data"]["config"] == sha(cfg)


def test_import_docker_save_and_oci_tar_identify_the_image_by_config(cli, tmp_path):
    layers, cfg = busybox_image()
    archive = docker_archive(tmp_path / "bb.tar", layers, cfg, ["busybox:stable"])
    layout = tmp_path / "layout"
    oci_layout(layout, layers, cfg, ref="docker.io/library/busybox:oci")
    oci_tar = tar_folder(layout, tmp_path / "layout.tar")
    assert cli("image", "import", str(archive)).code == 0
    assert cli("image", "import", str(oci_tar)).code == 0
    listed = json.loads(cli("image", "list", "--json").out)
    refs = {i["ref"]: i for i in listed}
    assert set(refs) == {"busybox:stable", "docker.io/library/busybox:oci"}
    a, b = refs["busybox:stable"], refs["docker.io/library/busybox:oci"]
    assert a["config_digest"] == b["config_digest"] == sha(cfg)
    assert a["manifest_digest"] != b["manifest_digest"]  # uncompressed layers in docker save
    # docker's short names find it.
    assert json.loads(cli("image", "show", "busybox:oci", "--json").out)["ref"].endswith(":oci")


def test_import_root_folder(cli, tmp_path):
    folder = tmp_path / "myroot"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin/hello").write_text("hi")
    os.symlink("/etc/localtime-elsewhere", folder / "lt")
    r = cli("image", "import", str(folder))
    assert r.code == 0, r
    shown = json.loads(cli("image", "show", "myroot", "--json").out)
    assert shown["source"] == "rootfs"
    assert (Path(shown["rootfs"]) / "bin/hello").read_text() == "hi"
    assert os.readlink(Path(shown["rootfs"]) / "lt") == "/etc/localtime-elsewhere"


def test_tampered_blob_and_root_are_found_by_verify(cli, tmp_path):
    layers, cfg = busybox_image()
    oci_layout(tmp_path / "bb", layers, cfg)
    assert cli("image", "import", str(tmp_path / "bb")).code == 0
    shown = json.loads(cli("image", "show", "bb:1.0", "--json").out)
    rootfs = Path(shown["rootfs"])
    (rootfs / "etc/passwd").chmod(0o644)
    (rootfs / "etc/passwd").write_text("root::0:0::/:/bin/sh\n")
    (rootfs / "planted").write_text("x")
    r = cli("image", "verify", "--json")
    assert r.code == 1
    problems = json.loads(r.out)["images"][0]["problems"]
    assert "unpacked root: etc/passwd: differs from the image's layers" in problems
    assert "unpacked root: planted: not in the image's layers" in problems
    layer_blob = Path(os.environ["KRATE_HOME"]) / "artifacts/sha256" / sha(layers[0])[7:]
    layer_blob.chmod(0o600)
    layer_blob.write_bytes(b"changed")
    r = cli("image", "verify", "bb:1.0")
    assert r.code == 1 and "content changed" in r.err


def test_rm_keeps_blobs_another_image_needs(cli, tmp_path, krate_home):
    base = busybox_layer()
    extra = layer([d("opt"), f("opt/x", b"x")])
    one = config([base], cmd=["one"])
    two = config([base, extra], cmd=["two"])
    oci_layout(tmp_path / "one", [base], one)
    oci_layout(tmp_path / "two", [base, extra], two)
    assert cli("image", "import", str(tmp_path / "one")).code == 0
    assert cli("image", "import", str(tmp_path / "two")).code == 0
    store = krate_home / "artifacts/sha256"
    r = cli("image", "rm", "two:1.0", "--json")
    assert r.code == 0, r
    result = json.loads(r.out)
    assert result["removed"] == ["two:1.0"]
    assert sha(base) in result["blobs_kept"] and sha(extra) in result["blobs_deleted"]
    assert (store / sha(base)[7:]).exists() and not (store / sha(extra)[7:]).exists()
    assert result["roots_removed"] == [sha(two)]
    assert not (krate_home / "images/roots" / sha(two)[7:]).exists()
    assert cli("image", "verify").code == 0
    assert cli("audit", "verify").code == 0
    kinds = [e["kind"] for e in json.loads(cli("audit", "list", "--json").out)]
    assert kinds == ["image.imported", "image.imported", "image.removed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["image", "show", "nope"], "krate: no image nope; see `krate image list`"),
        (["image", "import", "/no/such/file"], "krate: /no/such/file does not exist"),
        (["image", "import", "/etc/hostname"], "is not a tar archive"),
    ],
)
def test_bad_input_is_one_line(cli, args, message):
    r = cli(*args)
    assert r.code == 1 and message in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_hostile_image_imported_by_an_ordinary_user_stays_inside(ordinary_user, user_tmp):
    """The unprivileged unpack through the real command: owners recorded, nothing outside."""
    if ordinary_user is None:
        pytest.skip("needs root to create the ordinary user")
    outside = user_tmp / "outside"
    outside.mkdir()
    hostile = layer([
        f("../../../../escape", b"pwned"), f(str(outside / "abs"), b"pwned"),
        sym("out", str(outside)),
        f("out/through", b"pwned"), f("su", b"x", 0o4755),
        d("home"), d("home/app", uid=1000, gid=1000),
    ])  # fmt: skip
    layers = [busybox_layer(), hostile]
    oci_layout(user_tmp / "evil", layers, config(layers))
    home = user_tmp / "home"
    home.mkdir()
    chown_tree(user_tmp, ordinary_user)
    env = {**os.environ, "KRATE_HOME": str(home)}
    r = run_krate("image", "import", str(user_tmp / "evil"), env=env, user=ordinary_user)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in outside.iterdir()) == []
    r = run_krate("image", "show", "evil:1.0", "--json", env=env, user=ordinary_user)
    rootfs = Path(json.loads(r.stdout)["rootfs"])
    assert (rootfs / "escape").read_bytes() == b"pwned"
    assert (rootfs / str(outside)[1:] / "through").read_bytes() == b"pwned"
    assert not (rootfs / "su").stat().st_mode & stat.S_ISUID
    meta = json.loads((rootfs.parent / "meta.json").read_text())
    assert meta["owners"]["home/app"] == [1000, 1000] and meta["privileged"] is False


def test_prune_keeps_images_their_blobs_and_a_verifiable_record(cli, tmp_path, krate_home):
    """Prune removes blobs no artifact row names: image blobs must survive it."""
    from datetime import UTC, datetime, timedelta

    from krate.paths import Paths
    from krate.privacy import prune
    from krate.store import open_store

    layers, cfg = busybox_image()
    oci_layout(tmp_path / "bb", layers, cfg)
    assert cli("image", "import", str(tmp_path / "bb")).code == 0
    cli("audit", "note", "later")
    paths = Paths.from_env()
    blob = krate_home / "artifacts/sha256" / sha(layers[0])[7:]
    old = datetime.now(UTC) - timedelta(days=2)
    for p in (krate_home / "artifacts/sha256").iterdir():
        os.utime(p, (old.timestamp(), old.timestamp()))
    with open_store(paths) as store:
        result = prune.prune(store, datetime.now(UTC) + timedelta(seconds=1),
                             paths.artifacts_dir, datetime.now(UTC))  # fmt: skip
    assert result.events >= 1 and result.artifacts_removed == []
    assert blob.exists()
    assert cli("audit", "verify").code == 0, cli("audit", "verify").err
    shown = json.loads(cli("image", "show", "bb:1.0", "--json").out)
    assert shown["config_digest"] == sha(cfg)
    assert cli("image", "verify").code == 0


def test_data_delete_purges_read_only_image_folders_as_an_ordinary_user(ordinary_user, user_tmp):
    if ordinary_user is None:
        pytest.skip("needs root to create the ordinary user")
    blob = layer([d("ro", 0o555), f("ro/x", b"x", 0o444), d("locked", 0o000)])
    oci_layout(user_tmp / "ro", [blob], config([blob]))
    home = user_tmp / "home"
    home.mkdir()
    chown_tree(user_tmp, ordinary_user)
    env = {**os.environ, "KRATE_HOME": str(home)}
    r = run_krate("image", "import", str(user_tmp / "ro"), env=env, user=ordinary_user)
    assert r.returncode == 0, r.stderr
    r = run_krate("data", "delete", "--now", "--yes", env=env, user=ordinary_user)
    assert r.returncode == 0, r.stderr
    leftovers = [p for p in user_tmp.rglob("*") if "images" in p.parts]
    assert leftovers == []


def test_two_platform_index_imports_this_machines_image(cli, tmp_path):
    from krate.images.importer import host_platform

    here = busybox_image(cmd=["here"])
    other = busybox_image(cmd=["other"])
    layout = tmp_path / "multi"
    oci_layout(layout, *here, ref=None)
    oci_layout(tmp_path / "scratch", *other, ref=None)
    blobs = layout / "blobs/sha256"
    for p in (tmp_path / "scratch/blobs/sha256").iterdir():
        (blobs / p.name).write_bytes(p.read_bytes())
    mine = json.loads((layout / "index.json").read_text())["manifests"][0]
    theirs = json.loads((tmp_path / "scratch/index.json").read_text())["manifests"][0]
    arch = host_platform()[1]
    mine["platform"] = {"os": "linux", "architecture": arch}
    theirs["platform"] = {"os": "linux", "architecture": "s390x" if arch != "s390x" else "arm64"}
    nested = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                         "manifests": [theirs, mine]}).encode()  # fmt: skip
    (blobs / sha(nested)[7:]).write_bytes(nested)
    ref_name = {"org.opencontainers.image.ref.name": "2.0"}
    top = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(nested),
        "size": len(nested), "annotations": ref_name}]}  # fmt: skip
    (layout / "index.json").write_text(json.dumps(top))
    r = cli("image", "import", str(layout), "--json")
    assert r.code == 0, r
    (image,) = json.loads(r.out)
    assert image["ref"] == "multi:2.0" and image["config"]["Cmd"] == ["here"]


def test_data_where_and_export_cover_images(cli, tmp_path, krate_home):
    layers, cfg = busybox_image()
    oci_layout(tmp_path / "bb", layers, cfg)
    assert cli("image", "import", str(tmp_path / "bb")).code == 0
    where = json.loads(cli("data", "where", "--json").out)
    places = {p["place"]: p for p in where["places"]}
    assert places["image roots"]["exists"] and places["image roots"]["bytes"] > 100_000
    assert where["places"][1]["records"]["tables"]["images"] == 1
    out = tmp_path / "export.zip"
    assert cli("data", "export", "--out", str(out)).code == 0
    import zipfile

    with zipfile.ZipFile(out) as z:
        rows = z.read("tables/images.jsonl").decode().splitlines()
        readme = z.read("README.txt").decode()
    assert len(rows) == 1 and "bb:1.0" in rows[0]
    assert "image names" in readme


def test_a_killed_unpack_is_swept_and_a_deleted_root_comes_back(cli, tmp_path, krate_home):
    layers, cfg = busybox_image()
    oci_layout(tmp_path / "bb", layers, cfg)
    roots = krate_home / "images/roots"
    stale = roots / ".tmp-killed"
    stale.mkdir(parents=True)
    (stale / "rootfs").mkdir(mode=0o555)
    os.utime(stale, (0, 0))
    assert cli("image", "import", str(tmp_path / "bb")).code == 0
    assert not stale.exists()
    from krate.images.roots import remove_tree

    remove_tree(roots / sha(cfg)[7:])
    shown = json.loads(cli("image", "show", "bb:1.0", "--json").out)
    assert shown["rootfs"] is None
    from krate.images import catalog
    from krate.images import roots as roots_mod
    from krate.paths import Paths
    from krate.store import open_store

    with open_store(Paths.from_env(), readonly=True) as store:
        image = catalog.resolve(store, Paths.from_env(), "bb:1.0")
    assert (roots_mod.ensure(Paths.from_env(), image) / "bin/busybox").exists()


def test_image_names_complete_without_touching_the_store(cli, tmp_path, krate_home):
    from .test_completions import bash_complete

    layers, cfg = busybox_image()
    oci_layout(tmp_path / "bb", layers, cfg)
    assert cli("image", "import", str(tmp_path / "bb")).code == 0
    assert cli("image", "import", str(tmp_path / "bb"), "--ref", "other:2").code == 0
    before = {p.name: p.stat().st_mtime_ns for p in krate_home.iterdir()}
    assert bash_complete("krate", "image", "show", "b", home=krate_home) == ["bb:1.0"]
    assert bash_complete("krate", "image", "rm", "", home=krate_home) == ["bb:1.0", "other:2"]
    assert bash_complete("krate", "run", "--image", "o", home=krate_home) == ["other:2"]
    after = {p.name: p.stat().st_mtime_ns for p in krate_home.iterdir()}
    assert after == before
