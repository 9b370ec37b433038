"""`krate image pull` against a real registry on loopback (Debian's docker-registry).

Images are built here (tests/registry_images.py), pushed with the registry's own
protocol, pulled back by the installed `krate`, and checked on disk: every blob in
the store hashes to its name, is read-only, and the record names the image
(`image.pulled`, the images row) and every connection (`krate audit network`).
Broken registries are real too: blob files corrupted or truncated in the registry's
own storage, tags that do not exist, credentials that are wrong or missing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pwd
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KRATE, run_krate, wait_for
from tests.registry_images import (
    OCI_ZSTD,
    Pusher,
    blob_file,
    image,
    layer,
)
from tests.registry_server import Registry, TokenServer, needs_registry
from tests.registry_support import USER, events

pytestmark = needs_registry
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64")
OTHER_ARCH = "arm64" if HOST_ARCH == "amd64" else "amd64"


@pytest.fixture
def env(registry, password, keychain):
    env = keychain.env()
    login = run_krate(
        "login", registry.name, "-u", USER, "--password-stdin", input=password, env=env
    )
    assert login.returncode == 0, login.stderr
    return env


@pytest.fixture
def pusher(registry, password):
    return Pusher(registry.port, USER, password)


def store_dir(home: Path) -> Path:
    return home / "artifacts" / "sha256"


def stored(home: Path) -> set[str]:
    folder = store_dir(home)
    return {f"sha256:{p.name}" for p in folder.iterdir()} if folder.is_dir() else set()


def leftovers(home: Path) -> list[str]:
    folder = store_dir(home)
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []


def image_rows(home: Path) -> list[tuple]:
    db = home / "krate.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT ref, config_digest, manifest_digest FROM images").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def pull(*args: str, env=None, **kw):
    return run_krate("image", "pull", *args, env=env, **kw)


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if "plain HTTP" not in line]
    assert len(lines) == 1 and lines[0].startswith("krate: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_pull_by_tag_stores_checked_blobs_and_records_the_image(registry, env, pusher, krate_home):
    img = image([layer({"bin/hello": b"hello\n"}), layer({"etc/data": os.urandom(300_000)})])
    pusher.image("me/tools", "1.4", img)
    ref = f"{registry.name}/me/tools:1.4"
    result = pull(ref, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == img.config_digest + "\n"  # the image's identity, alone on stdout
    assert f"pulled {ref} (linux/{HOST_ARCH}): " in result.stderr

    # Every blob is in the store under its digest, hashes to it, read-only, private folder.
    wanted = {img.digest, img.config_digest, *img.layers}
    assert stored(krate_home) == wanted
    for digest in wanted:
        path = store_dir(krate_home) / digest[7:]
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(store_dir(krate_home).stat().st_mode) == 0o700
    assert leftovers(krate_home) == []

    # The record: the image (ref -> config, manifest, layers) and every connection.
    (pulled,) = events(krate_home, "image.pulled")
    assert pulled["ref"] == ref and pulled["config"] == img.config_digest
    assert pulled["manifest"] == img.digest and pulled["layers"] == img.layers
    assert pulled["source"] == "registry"
    assert image_rows(krate_home) == [(ref, img.config_digest, img.digest)]
    egress = events(krate_home, "network.egress")
    assert egress and {(e["host"], e["port"]) for e in egress} == {("127.0.0.1", registry.port)}
    assert {e["command"] for e in egress} == {"krate login", "krate image pull"}
    audit = run_krate("audit", "network", env=env)
    assert "krate image pull" in audit.stdout, audit.stdout
    verify = run_krate("audit", "verify", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_credentials_are_required_and_checked(registry, pusher, keychain, krate_home):
    pusher.image("me/private", "1", image([layer({"a": b"a"})]))
    ref = f"{registry.name}/me/private:1"
    env = keychain.env()
    anonymous = pull(ref, env=env)
    assert anonymous.returncode == 1
    line = one_line_error(anonymous)
    assert "requires a login" in line and f"krate login {registry.name}" in line

    # The keychain holds credentials the registry no longer accepts (the password changed).
    keychain.store("krate", registry.name, json.dumps({"username": USER, "password": "wrong-pw"}))
    wrong = pull(ref, env=env)
    assert wrong.returncode == 1
    line = one_line_error(wrong)
    assert "refused the user name or password" in line and "wrong-pw" not in wrong.stderr
    assert stored(krate_home) == set() and image_rows(krate_home) == []


def test_missing_tag_and_missing_repository_are_one_line_errors(registry, env, pusher):
    pusher.image("me/tools", "1", image([layer({"a": b"a"})]))
    tag = pull(f"{registry.name}/me/tools:nope", env=env)
    assert tag.returncode == 1
    assert f"{registry.name}/me/tools:nope was not found" in one_line_error(tag)
    repo = pull(f"{registry.name}/me/nothing:1", env=env)
    assert repo.returncode == 1
    line = one_line_error(repo)
    assert "no repository me/nothing" in line or "was not found" in line
    bad = pull("127.0.0.1:5000/Me/UPPER:1", env=env)
    assert bad.returncode == 2 and "not an image name" in one_line_error(bad)


def test_pull_by_digest_and_a_digest_that_is_not_there(registry, env, pusher, krate_home):
    img = image([layer({"a": b"by digest"})])
    pusher.image("me/pinned", None, img)  # no tag at all: only its digest names it
    ref = f"{registry.name}/me/pinned@{img.digest}"
    result = pull(ref, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == img.config_digest
    assert image_rows(krate_home) == [(ref, img.config_digest, img.digest)]
    again = pull(ref, "--json", env=env)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["image"] == img.config_digest and doc["manifest_digest"] == img.digest
    assert doc["ref"] == ref and doc["layers"] == img.layers and doc["index_digest"] is None
    assert doc["fetched"] == [] and set(doc["present"]) == {img.digest, img.config_digest,
                                                            *img.layers}  # fmt: skip
    assert doc["bytes_received"] == 0 and doc["platform"] == f"linux/{HOST_ARCH}"
    other = "sha256:" + "0" * 64
    missing = pull(f"{registry.name}/me/pinned@{other}", env=env)
    assert missing.returncode == 1 and "was not found" in one_line_error(missing)


def test_a_two_platform_index_gives_each_platform_its_own_image(registry, env, pusher, krate_home):
    here = image([layer({"arch": HOST_ARCH.encode()})], arch=HOST_ARCH)
    there = image([layer({"arch": OTHER_ARCH.encode()})], arch=OTHER_ARCH, variant="v8")
    index_digest = pusher.index("me/multi", "1", [here, there])
    ref = f"{registry.name}/me/multi:1"

    default = pull(ref, env=env)
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == here.config_digest
    assert f"linux/{HOST_ARCH}" in default.stderr
    assert there.layers[0] not in stored(krate_home)  # the other platform was not fetched

    chosen = pull(ref, "--platform", f"linux/{OTHER_ARCH}", env=env)
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.strip() == there.config_digest
    (_, second) = events(krate_home, "image.pulled")
    assert second["manifest"] == there.digest and second["manifest"] != index_digest

    before = stored(krate_home)
    absent = pull(ref, "--platform", "linux/s390x", env=env)
    assert absent.returncode == 1
    line = one_line_error(absent)
    assert "no linux/s390x variant" in line
    assert f"linux/{HOST_ARCH}" in line and f"linux/{OTHER_ARCH}/v8" in line
    assert stored(krate_home) == before
    bad = pull(ref, "--platform", "amd64", env=env)
    assert bad.returncode == 2 and "is not a platform" in one_line_error(bad)


def test_a_docker_manifest_list_of_schema_2_manifests(registry, env, pusher, krate_home):
    here = image([layer({"d": b"docker"})], arch=HOST_ARCH, docker=True)
    there = image([layer({"d": b"other"})], arch=OTHER_ARCH, docker=True)
    pusher.index("me/docker", "latest", [there, here], docker=True)
    result = pull(f"{registry.name}/me/docker", env=env)  # no tag: latest, as docker reads it
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == here.config_digest
    (pulled,) = events(krate_home, "image.pulled")
    assert pulled["ref"] == f"{registry.name}/me/docker:latest"
    assert pulled["manifest"] == here.digest and pulled["layers"] == here.layers


@pytest.mark.parametrize("damage", ["same size", "truncated"])
def test_a_corrupted_blob_leaves_nothing_behind(registry, env, pusher, krate_home, damage):
    good, bad = layer({"good": b"fine"}), layer({"bad": os.urandom(200_000)})
    img = image([good, bad])
    pusher.image("me/broken", "1", img)
    victim = blob_file(registry.storage, img.layers[1])
    data = victim.read_bytes()
    if damage == "same size":
        victim.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    else:
        victim.write_bytes(data[: len(data) // 2])
    result = pull(f"{registry.name}/me/broken:1", env=env)
    assert result.returncode == 1
    line = one_line_error(result)
    assert f"blob {img.layers[1][:19]} failed its check" in line and "nothing of it" in line
    assert img.layers[1] not in stored(krate_home)
    assert leftovers(krate_home) == [] and image_rows(krate_home) == []
    assert events(krate_home, "image.") == []


def test_a_broken_pull_resumes_without_fetching_again(registry, env, pusher, krate_home):
    first, second = layer({"one": os.urandom(150_000)}), layer({"two": os.urandom(150_000)})
    img = image([first, second])
    pusher.image("me/resume", "1", img)
    victim = blob_file(registry.storage, img.layers[1])
    original = victim.read_bytes()
    victim.write_bytes(original[:-10])
    broken = pull(f"{registry.name}/me/resume:1", env=env)
    assert broken.returncode == 1
    assert {img.config_digest, img.layers[0]} <= stored(krate_home)  # what arrived stays

    # The registry is repaired, and loses the first layer and the config: had krate fetched
    # them again, the pull would fail. It asks only for what the store lacks.
    victim.write_bytes(original)
    blob_file(registry.storage, img.layers[0]).unlink()
    blob_file(registry.storage, img.config_digest).unlink()
    again = pull(f"{registry.name}/me/resume:1", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == img.config_digest
    assert "2 already in the store" in again.stderr
    assert stored(krate_home) == {img.digest, img.config_digest, *img.layers}


def test_zstd_layers_are_refused_before_anything_is_downloaded(registry, env, pusher, krate_home):
    import importlib.util

    if importlib.util.find_spec("compression") and importlib.util.find_spec("compression.zstd"):
        pytest.skip("this Python has compression.zstd: zstd layers are pulled")
    img = image([layer({"z": b"zstd"})], layer_type=OCI_ZSTD)
    pusher.image("me/zstd", "1", img)
    result = pull(f"{registry.name}/me/zstd:1", env=env)
    assert result.returncode == 1
    line = one_line_error(result)
    assert "zstd-compressed" in line and "compression.zstd" in line
    assert stored(krate_home) == set()


def test_bearer_token_pull_and_a_token_without_pull_rights(tmp_path, keychain, krate_home):
    users = {"reader": ("read-pw", ["pull"]), "nobody": ("no-pw", [])}
    tokens = TokenServer(tmp_path / "tokens", users).start()
    reg = Registry(tmp_path / "registry", token=tokens).start()
    try:
        img = image([layer({"t": b"token"})])
        token = tokens.sign(
            {
                "iss": tokens.issuer, "sub": "t", "aud": tokens.service, "exp": 2**31,
                "nbf": 0, "iat": 0, "jti": "x",
                "access": [{"type": "repository", "name": "team/tools",
                            "actions": ["pull", "push"]}],
            }
        )  # fmt: skip
        seeding = Pusher(reg.port)
        seeding.headers["Authorization"] = "Bearer " + token
        seeding.image("team/tools", "1", img)
        env = keychain.env()
        ref = f"{reg.name}/team/tools:1"
        for user, secret in (("reader", "read-pw"), ("nobody", "no-pw")):
            login = run_krate(
                "login", reg.name, "-u", user, "--password-stdin", input=secret, env=env
            )
            assert login.returncode == 0, login.stderr
            result = pull(ref, env=env)
            if user == "reader":
                assert result.returncode == 0, result.stderr
                assert result.stdout.strip() == img.config_digest
                scopes = [r["scope"] for r in tokens.requests if r["user"] == "reader"]
                assert ["repository:team/tools:pull"] in scopes  # pull only, never push
            else:
                assert result.returncode == 1
                line = one_line_error(result)
                assert "did not grant the access needed" in line and "pull permission" in line
        egress = {(e["host"], e["port"]) for e in events(krate_home, "network.egress")}
        assert egress == {("127.0.0.1", reg.port), ("127.0.0.1", tokens.port)}
    finally:
        reg.kill()
        tokens.stop()


@pytest.mark.parametrize("who", ["root", "user"])
def test_an_anonymous_pull_as_root_and_as_an_ordinary_user(tmp_path, ordinary_user, user_tmp, who):
    if who == "user" and ordinary_user is None:
        pytest.skip("the ordinary-user variant needs root to create the user")
    user = ordinary_user if who == "user" else None
    reg = Registry(tmp_path / "open-registry").start()  # no auth: public images
    try:
        img = image([layer({"bin/tool": os.urandom(70_000)})])
        Pusher(reg.port).image("public/tool", "2", img)
        home = user_tmp / "krate-home"
        env = {"PATH": os.environ["PATH"], "KRATE_HOME": str(home)}  # no keychain at all
        result = run_krate("image", "pull", "-q", f"{reg.name}/public/tool:2", env=env, user=user)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == img.config_digest
        assert "pulled" not in result.stderr  # --quiet: no summary
        uid = os.getuid() if user is None else pwd.getpwnam(user).pw_uid
        for digest in (img.digest, img.config_digest, *img.layers):
            path = store_dir(home) / digest[7:]
            assert path.stat().st_uid == uid and stat.S_IMODE(path.stat().st_mode) == 0o400
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert image_rows(home)[0][1] == img.config_digest
    finally:
        reg.kill()


def test_an_interrupted_pull_leaves_no_partial_blob(registry, env, pusher, krate_home):
    big = layer({"big": os.urandom(64 << 20)}, level=0)  # stored, not compressed: quick
    img = image([big])
    pusher.image("me/big", "1", img)
    proc = subprocess.Popen(
        [KRATE, "image", "pull", f"{registry.name}/me/big:1"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: leftovers(krate_home) or proc.poll() is not None, what="a temp blob")
        registry.pause()  # the download hangs mid-blob
        os.kill(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        registry.resume()
        proc.kill()
    assert proc.returncode == 130, err
    assert leftovers(krate_home) == []
    assert img.layers[0] not in stored(krate_home)
    assert image_rows(krate_home) == []


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static")
def test_a_pulled_image_runs(tmp_path, box):
    """Pull then run, as root and as an ordinary user: what was pulled is what runs."""
    from tests.image_support import busybox_layer, d, f
    from tests.image_support import layer as tar_layer

    layers = [busybox_layer(), tar_layer([d("srv"), f("srv/motd", b"pulled, then run\n")])]
    img = image([(gz, gzip.decompress(gz)) for gz in layers], cmd=["sh"])
    reg = Registry(tmp_path / "open-registry").start()
    try:
        Pusher(reg.port).image("tools/busybox", "1", img)
        ref = f"{reg.name}/tools/busybox:1"
        pulled = box.krate("image", "pull", ref)
        assert pulled.returncode == 0, pulled.stderr
        assert pulled.stdout.strip() == img.config_digest
    finally:
        reg.kill()  # running it needs no registry: run never pulls
    ran = box.krate("run", ref, "--", "sh", "-c", "cat /srv/motd; busybox | head -1 | cut -c1-7")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["pulled, then run", "BusyBox"]
    assert box.krate("image", "verify").returncode == 0
    shown = json.loads(box.krate("runs", "show", "last", "--json").stdout)
    assert shown["image"]["config"] == img.config_digest
    assert shown["image"]["manifest"] == img.digest


def test_progress_on_a_terminal_and_one_line_on_a_pipe(registry, env, pusher):
    """stderr on a pty: rich bars per layer; on a pipe only the summary; stdout the digest."""
    import pty

    img = image([layer({"a": os.urandom(6 << 20)}, level=0), layer({"b": os.urandom(5 << 20)})])
    pusher.image("me/bars", "1", img)
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [KRATE, "image", "pull", f"{registry.name}/me/bars:1"],
        env={**env, "COLUMNS": "100"}, stdout=subprocess.PIPE, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    drawn = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(main)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    assert out.decode() == img.config_digest + "\n"
    assert img.layers[0][7:19].encode() in drawn and b"MB" in drawn
    piped = pull(f"{registry.name}/me/bars:1", env=env)
    lines = [ln for ln in piped.stderr.splitlines() if "plain HTTP" not in ln]
    assert len(lines) == 1 and lines[0].startswith("pulled "), piped.stderr


def test_a_pull_runs_without_typer_locked_down_and_prints_what_typer_prints(
    registry, env, pusher, krate_home
):
    """The fast route (cli/fastread.py) takes the transport started at entry, locks down
    before it opens the store, never loads Typer, and prints the same bytes as Typer's."""
    img = image([layer({"bin/hello": b"hello\n"})])
    pusher.image("me/fast", "1", img)
    ref = f"{registry.name}/me/fast:1"
    code = (
        "import sys\n"
        "from krate.cli import fastread, main\n"
        "from krate.netguard import lockdown\n"
        "if sys.argv[1] == 'typer':\n"
        "    fastread.parse = lambda args: None\n"
        "code = main.main(sys.argv[2:], protect=True)\n"
        "seccomp = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')]\n"
        "print(code, 'typer' in sys.modules, lockdown.state()['applied_here'], seccomp,"
        " file=sys.stderr)\n"
    )
    first = subprocess.run(
        [sys.executable, "-c", code, "fast", "image", "pull", ref],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert first.stdout == img.config_digest + "\n", first.stderr
    assert first.stderr.splitlines()[-1] == "0 False True ['2']", first.stderr
    assert stored(krate_home) == {img.digest, img.config_digest, *img.layers}
    assert leftovers(krate_home) == []
    (pulled,) = events(krate_home, "image.pulled")
    assert pulled["ref"] == ref
    egress = events(krate_home, "network.egress")
    assert "krate image pull" in {e["command"] for e in egress}
    routes = {}
    for route in ("fast", "typer"):
        for args in (["-q", ref], ["--json", ref], [ref, "--platform", "linux/s390x"]):
            done = subprocess.run(
                [sys.executable, "-c", code, route, "image", "pull", *args],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            *err, state = done.stderr.splitlines()
            assert state.split()[1:3] == [str(route == "typer"), "True"], done.stderr
            out = done.stdout
            if out.startswith("{"):  # --json: everything but the time it took
                out = {k: v for k, v in json.loads(out).items() if k != "duration_s"}
            routes.setdefault(route, []).append((state.split()[0], out, err))
    for fast, slow in zip(routes["fast"], routes["typer"], strict=True):
        assert fast == slow
    assert routes["fast"][2][0] == "1" and "linux/s390x" in routes["fast"][2][2][-1]
