"""`krate run IMAGE -- CMD` on real bubblewrap: as root, as an ordinary user, and as a root
krate that runs the workload as the workspace's owner."""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import chown_tree
from .image_support import busybox_layer, config, d, f, layer, oci_layout, sym
from .run_support import SECRET, Box

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


@pytest.fixture(params=["root", "user", "owner"])
def ibox(request, ordinary_user):
    """root: root krate, --as-root; user: krate as the ordinary user; owner: root krate whose
    sandbox runs as the workspace's owner (the image root is in root's private data folder)."""
    if request.param != "root" and ordinary_user is None:
        pytest.skip("needs root to create the ordinary user")
    box = Box(ordinary_user if request.param == "user" else None)
    if request.param == "owner":
        chown_tree(box.ws, ordinary_user)
        box.as_root = False
    box.mode = request.param
    yield box
    box.cleanup()


def add_image(box: Box, name: str = "bb", **cfg) -> str:
    layers = [busybox_layer(), layer([d("srv"), f("srv/motd", b"from the image\n")])]
    cfg_blob = config(layers, **cfg)
    folder = box.base / f"layout-{name}"
    oci_layout(folder, layers, cfg_blob, ref="1")
    if box.user:
        chown_tree(folder, box.user)
    r = box.krate("image", "import", str(folder), "--ref", f"{name}:1")
    assert r.returncode == 0, r.stderr
    return "sha256:" + __import__("hashlib").sha256(cfg_blob).hexdigest()


def test_image_run_reads_the_image_writes_only_the_workspace(ibox):
    config_digest = add_image(ibox)
    script = (
        "cat /srv/motd; pwd; cat README; echo made > out.txt; "
        "touch /etc/x 2>/dev/null && echo ROOT-WRITABLE; "
        "touch /tmp/scratch && echo tmp-ok; id -u; exit 7"
    )
    r = ibox.krate("run", "bb:1", "--", "sh", "-c", script)
    assert r.returncode == 7, r.stderr
    assert r.stdout.split("\n")[:3] == ["from the image", "/work", "hello"]
    assert "ROOT-WRITABLE" not in r.stdout and "tmp-ok" in r.stdout
    assert r.stdout.split()[-1] == "0"  # root inside (no capabilities), as docker's default
    assert (ibox.ws / "out.txt").read_text() == "made\n"
    # The unpacked root is unchanged, and the run record names the image.
    assert ibox.krate("image", "verify").returncode == 0
    shown = json.loads(ibox.krate("runs", "show", "last", "--json").stdout)
    assert shown["image"] == {
        "ref": "bb:1",
        "config": config_digest,
        "manifest": shown["image"]["manifest"],
    }
    text = ibox.krate("runs", "show", "last").stdout
    assert f"bb:1 {config_digest}" in text


def test_image_run_sees_nothing_of_the_host(ibox):
    add_image(ibox)
    script = (
        f"cat {ibox.key} 2>&1; ls {ibox.base} 2>&1; ls /var 2>&1; "
        "grep -rs SECRET-KEY /bin /etc /home /root /srv /tmp /work; echo done"
    )
    r = ibox.krate("run", "--no-network", "bb:1", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout and "done" in r.stdout
    assert "No such file or directory" in r.stdout


def test_image_run_network_goes_through_the_proxy_and_is_recorded(ibox):
    add_image(ibox)
    r = ibox.krate(
        "run",
        "bb:1",
        "--",
        "sh",
        "-c",
        "wget -q -O- http://blocked.example/ 2>&1; echo rc=$?",
    )
    assert r.returncode == 0, r.stderr
    assert "rc=1" in r.stdout  # the proxy refused it
    shown = json.loads(ibox.krate("runs", "show", "last", "--json").stdout)
    denied = [d for d in shown["decisions"] if d.get("verdict") == "deny"]
    assert any("blocked.example" in json.dumps(d) for d in denied), shown["decisions"]
    r = ibox.krate(
        "run",
        "--no-network",
        "bb:1",
        "--",
        "sh",
        "-c",
        "wget -q -O- http://1.1.1.1/ 2>&1; echo rc=$?",
    )
    assert "rc=1" in r.stdout


def test_entrypoint_cmd_user_env_like_docker_run(ibox):
    add_image(ibox, "ep", entrypoint=["/bin/echo", "ep"], cmd=["default"],
              env=["PATH=/bin", "FOO=image"], user="app")  # fmt: skip
    r = ibox.krate("run", "--image", "ep:1")
    assert (r.returncode, r.stdout) == (0, "ep default\n"), r.stderr
    r = ibox.krate("run", "ep:1", "--", "given")
    assert r.stdout == "ep given\n"
    add_image(ibox, "us", env=["PATH=/bin", "FOO=image"], user="app")
    env = ibox.env(FOO="host", TOKEN="s3cr3t")
    r = ibox.krate(
        "run",
        "--env",
        "FOO",
        "us:1",
        "--",
        "sh",
        "-c",
        "id -u; echo $FOO $HOME $TOKEN; echo $PATH",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["1000", "host /home/app", "/bin"]


def test_missing_image_is_125_with_the_pull_command(ibox):
    r = ibox.krate("run", "alpine:3.20", "--", "true")
    assert r.returncode == 125
    assert "run `krate image pull alpine:3.20`" in r.stderr
    r = ibox.krate("run", "--image", "nope", "--", "true")
    assert r.returncode == 125 and "krate image pull nope" in r.stderr


def test_command_not_in_the_image_is_127(ibox):
    add_image(ibox)
    r = ibox.krate("run", "bb:1", "--", "python3", "-c", "1")
    assert r.returncode == 127 and "PATH of image bb:1" in r.stderr
    r = ibox.krate("run", "bb:1", "--", "/srv/motd")
    assert r.returncode == 126


def test_build_on_an_image_names_it_and_keeps_its_blobs(ibox):
    config_digest = add_image(ibox)
    r = ibox.krate("build", "--out", "dist", "bb:1", "--", "sh", "-c",
                   "mkdir -p dist && cat /srv/motd > dist/motd.txt")  # fmt: skip
    assert r.returncode == 0, r.stderr
    statement = json.loads(ibox.krate("provenance", "dist/motd.txt", "--json").stdout)
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    image = [d for d in deps if d.get("name") == "image"]
    assert image and image[0]["digest"] == {"sha256": config_digest[7:]}
    assert image[0]["annotations"]["ref"] == "bb:1"
    assert image[0]["annotations"]["manifestDigest"].startswith("sha256:")
    assert (ibox.ws / "dist/motd.txt").read_text() == "from the image\n"
    # rm forgets the name but keeps every blob of an image a build record names.
    r = ibox.krate("image", "rm", "bb:1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["blobs_deleted"] == []
    assert ibox.krate("artifacts", "verify").returncode == 0


def test_image_run_stays_on_the_fast_path(tmp_path, krate_home):
    """`krate run IMAGE` loads nothing `krate run` may not (ARCHITECTURE.md, start-up budget)."""
    import subprocess
    import sys

    from .test_run_fastpath import NOT_ON_THE_RUN_PATH

    layers = [busybox_layer()]
    oci_layout(tmp_path / "bb", layers, config(layers))
    subprocess.run([sys.executable, "-m", "krate", "image", "import", str(tmp_path / "bb")],
                   check=True, capture_output=True)  # fmt: skip
    slow = (*NOT_ON_THE_RUN_PATH, "tarfile", "gzip", "krate.provenance.store")
    code = (
        "import sys; from krate.cli.main import main; "
        "code = main(['run', '--as-root', '--no-network', 'bb:1.0', '--', 'sh', '-c', 'exit 3']); "
        f"print(code, *[m for m in {slow!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert done.stdout.split() == ["3"], done.stderr


def test_image_env_cannot_load_code_into_the_bridge(ibox):
    """The bridge is krate's code on the host's Python: the image's loader variables stay out."""
    add_image(ibox, "ld", env=["PATH=/bin", "LD_PRELOAD=/srv/evil.so", "LD_AUDIT=/srv/a.so"])
    r = ibox.krate("run", "ld:1", "--", "sh", "-c", "echo pre=$LD_PRELOAD audit=$LD_AUDIT")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "pre= audit=\n"
    assert "evil.so" not in r.stderr and "a.so" not in r.stderr


def test_image_loader_variables_reach_the_workload_not_bubblewrap(ibox):
    add_image(ibox, "ldn", env=["PATH=/bin", "LD_PRELOAD=/srv/evil.so"])
    r = ibox.krate("run", "--no-network", "ldn:1", "--", "sh", "-c", "echo pre=$LD_PRELOAD")
    assert r.returncode == 0, r.stderr
    # busybox is static: the loader never reads it inside; bubblewrap (dynamic) never saw it.
    assert r.stdout == "pre=/srv/evil.so\n" and "evil.so" not in r.stderr


def test_policy_paths_inside_the_workspace_hold_on_an_image(ibox):
    add_image(ibox)
    secrets = ibox.ws / "secrets"
    secrets.mkdir()
    (secrets / "key").write_text(SECRET)
    if ibox.user or ibox.mode == "owner":
        chown_tree(secrets, ibox.user or "krate-test")
    script = "cat /work/secrets/key 2>&1; echo x >> .git/config 2>&1 && echo GIT-WRITABLE; echo end"
    r = ibox.krate(
        "run", "--no-network", "--deny-read", "secrets", "bb:1", "--", "sh", "-c", script
    )
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout and "GIT-WRITABLE" not in r.stdout and "end" in r.stdout
    assert (ibox.ws / ".git/config").read_text() == "[core]\n"


def test_image_links_over_reserved_names_cannot_redirect_mounts(ibox):
    """/tmp, /work and /.krate are krate's: an image's links there must not move its mounts
    (into the workspace, where bubblewrap would make folders on the host)."""
    layers = [busybox_layer(), layer([sym("tmp", "work"), sym(".krate", "work/x"),
                                      sym("work", "srv"), d("srv")])]  # fmt: skip
    folder = ibox.base / "layout-links"
    oci_layout(folder, layers, config(layers), ref="1")
    if ibox.user:
        chown_tree(folder, ibox.user)
    assert ibox.krate("image", "import", str(folder), "--ref", "links:1").returncode == 0
    before = sorted(p.name for p in ibox.ws.iterdir())
    r = ibox.krate("run", "links:1", "--", "sh", "-c", "pwd; cat README; touch /tmp/t && echo tmp")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/work\nhello\ntmp\n"
    assert sorted(p.name for p in ibox.ws.iterdir()) == before


def test_home_is_writable_when_empty_and_keeps_the_images_files_otherwise(ibox):
    add_image(ibox, "hm", user="app")  # /home/app is empty in the image
    r = ibox.krate(
        "run", "--no-network", "hm:1", "--", "sh", "-c", "echo x > $HOME/f && cat $HOME/f"
    )
    assert (r.returncode, r.stdout) == (0, "x\n"), r.stderr
    layers = [busybox_layer(), layer([d("root", 0o755), f("root/.profile", b"from image\n")])]
    folder = ibox.base / "layout-full"
    oci_layout(folder, layers, config(layers), ref="1")
    if ibox.user:
        chown_tree(folder, ibox.user)
    assert ibox.krate("image", "import", str(folder), "--ref", "full:1").returncode == 0
    r = ibox.krate("run", "--no-network", "full:1", "--", "cat", "/root/.profile")
    assert (r.returncode, r.stdout) == (0, "from image\n"), r.stderr
