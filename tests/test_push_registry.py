"""`krate push` against a real registry on loopback (Debian's docker-registry, htpasswd auth).

Everything pushed is fetched back over plain HTTP here and checked: every digest,
the artifactType, the title annotation, the provenance manifest's subject and its
DSSE payload against the stored Statement. The keychain is a real Secret
Service (gnome-keyring on a private D-Bus bus: the `keychain` fixture).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import KRATE, run_krate
from tests.registry_server import INDEX, MANIFEST, Reader, Registry, needs_registry
from tests.registry_support import USER, events, make_artifact

pytestmark = needs_registry
EMPTY = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


@pytest.fixture
def env(registry, password, keychain):
    env = keychain.env()
    login = run_krate(
        "login", registry.name, "-u", USER, "--password-stdin", input=password, env=env
    )
    assert login.returncode == 0, login.stderr
    return env


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_push_then_fetch_everything_back_and_check_it(
    tmp_path, registry, env, password, krate_home
):
    artifact, build = make_artifact(tmp_path / "work")
    ref = f"{registry.name}/me/app:1.0"
    result = run_krate("push", "dist/app.tar.gz", ref, env=env)
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert digest.startswith("sha256:") and len(result.stdout.splitlines()) == 1
    assert "does not speak HTTPS; using plain HTTP" in result.stderr

    reader = Reader(registry, USER, password)
    body, headers = reader.manifest("me/app", "1.0")
    assert sha(body) == digest == headers["Docker-Content-Digest"]
    manifest = json.loads(body)
    assert manifest["mediaType"] == MANIFEST
    assert manifest["artifactType"] == "application/vnd.krate.artifact.v1"
    assert manifest["config"] == {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": EMPTY,
        "size": 2,
    }
    assert reader.blob("me/app", EMPTY) == b"{}"
    (layer,) = manifest["layers"]
    assert layer["digest"] == artifact.digest and layer["size"] == artifact.size
    assert layer["annotations"]["org.opencontainers.image.title"] == "app.tar.gz"
    stored = (krate_home / "artifacts" / "sha256" / artifact.digest[7:]).read_bytes()
    assert reader.blob("me/app", artifact.digest) == stored
    links = manifest["annotations"]
    assert links["sh.krate.build.id"] == build.id
    assert links["sh.krate.build.statement.sha256"] == build.statement_sha256
    assert links["sh.krate.artifact.name"] == "dist/app.tar.gz"

    # The provenance: found through the referrers tag (distribution 2.8 has no referrers API).
    index_body, _ = reader.manifest("me/app", digest.replace(":", "-"), accept=INDEX)
    index = json.loads(index_body)
    assert index["mediaType"] == INDEX
    (entry,) = index["manifests"]
    assert entry["artifactType"] == "application/vnd.dsse.envelope.v1+json"
    prov_body, _ = reader.manifest("me/app", entry["digest"])
    assert sha(prov_body) == entry["digest"] and len(prov_body) == entry["size"]
    prov = json.loads(prov_body)
    assert prov["subject"] == {"mediaType": MANIFEST, "digest": digest, "size": len(body)}
    assert prov["annotations"]["in-toto.io/predicate-type"] == "https://slsa.dev/provenance/v1"
    (dsse_layer,) = prov["layers"]
    envelope = json.loads(reader.blob("me/app", dsse_layer["digest"]))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    payload = base64.b64decode(envelope["payload"])
    assert payload == build.statement.encode()  # the exact stored Statement bytes
    statement = json.loads(payload)
    assert {"sha256": artifact.digest[7:]} in [s["digest"] for s in statement["subject"]]

    # The record: started then finished, the pushes row, egress to the registry only.
    kinds = [e["kind"] for e in events(krate_home, "push.")]
    assert kinds == ["push.started", "push.finished"]
    finished = events(krate_home, "push.finished")[0]
    assert finished["manifest"] == digest and finished["provenance"] == entry["digest"]
    assert finished["registry"] == registry.name and finished["repository"] == "me/app"
    assert finished["tag"] == "1.0" and finished["referrers"] == "tag"
    assert finished["bytes"] >= artifact.size and finished["duration_s"] >= 0
    assert set(finished["uploaded"]) == {EMPTY, dsse_layer["digest"], artifact.digest}
    conn = sqlite3.connect(krate_home / "krate.db")
    rows = conn.execute("SELECT artifact_digest, manifest_digest, tag FROM pushes").fetchall()
    assert rows == [(artifact.digest, digest, "1.0")]
    egress = events(krate_home, "network.egress")
    assert {(e["host"], e["port"]) for e in egress} == {("127.0.0.1", registry.port)}
    assert {e["command"] for e in egress} >= {"krate push"}

    # Pushing again is safe: every blob is found present and skipped, same digest.
    again = run_krate("push", artifact.digest[:19], ref, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == digest
    second = events(krate_home, "push.finished")[1]
    assert second["uploaded"] == [] and second["bytes"] == 0
    assert set(second["present"]) == {EMPTY, dsse_layer["digest"], artifact.digest}
    index_again = json.loads(reader.manifest("me/app", digest.replace(":", "-"), INDEX)[0])
    assert len(index_again["manifests"]) == 1
    assert run_krate("audit", "verify").returncode == 0

    # Where it was pushed, from `krate artifacts show`, and the connections in `audit network`.
    shown = json.loads(run_krate("artifacts", "show", "app.tar.gz", "--json").stdout)
    assert [(p["reference"], p["manifest_digest"]) for p in shown["pushes"]] == [(ref, digest)] * 2
    text = run_krate("artifacts", "show", "app.tar.gz").stdout
    assert f"pushed to:\n  {ref}  manifest {digest}" in text
    network = json.loads(run_krate("audit", "network", "--json").stdout)
    pushes = [c for c in network["egress"]["by_command"] if c["command"] == "krate push"]
    assert [d["destination"] for d in pushes[0]["destinations"]] == [registry.name]


def test_push_without_login_says_to_log_in(tmp_path, registry, krate_home, keychain):
    make_artifact(tmp_path / "work")
    env = keychain.env()
    result = run_krate("push", "app.tar.gz", f"{registry.name}/me/app:1", env=env)
    assert result.returncode == 1
    assert f"requires a login: run `krate login {registry.name}`" in result.stderr
    assert [e["kind"] for e in events(krate_home, "push.")] == ["push.started", "push.failed"]
    assert events(krate_home, "push.failed")[0]["error"] == "unauthorized"


def test_unknown_artifact_is_a_clear_error_and_nothing_is_sent(tmp_path, registry, env, krate_home):
    make_artifact(tmp_path / "work")
    before = len(events(krate_home, "network.egress"))
    result = run_krate("push", "nope.tar.gz", f"{registry.name}/me/app:1", env=env)
    assert result.returncode == 1
    assert "no artifact 'nope.tar.gz'" in result.stderr
    assert len(events(krate_home, "network.egress")) == before
    assert events(krate_home, "push.") == []


@pytest.mark.parametrize(
    "ref, message",
    [
        ("me/app:1", "names no registry"),
        ("127.0.0.1:5000/Me/App:1", "not a valid repository name"),
        ("127.0.0.1:5000/me/app@sha256:00", "not a digest"),
    ],
)
def test_bad_references_are_usage_errors(ref, message):
    result = run_krate("push", "x", ref)
    assert result.returncode == 2 and message in result.stderr


def test_registry_down_is_a_clear_error_after_bounded_retries(tmp_path, registry, env, krate_home):
    make_artifact(tmp_path / "work")
    registry.kill()
    started = time.monotonic()
    result = run_krate("push", "app.tar.gz", f"{registry.name}/me/app:1", env=env)
    took = time.monotonic() - started
    assert result.returncode == 1
    assert f"registry {registry.name} unreachable after 5 attempts" in result.stderr
    assert "nothing was recorded as pushed" in result.stderr
    assert took < 30
    failed = events(krate_home, "push.failed")
    assert len(failed) == 1 and failed[0]["error"] == "unreachable"
    conn = sqlite3.connect(krate_home / "krate.db")
    assert conn.execute("SELECT count(*) FROM pushes").fetchone()[0] == 0
    attempts = [e for e in events(krate_home, "network.egress") if e["command"] == "krate push"]
    assert attempts and {e["outcome"] for e in attempts} == {"failed"}


def test_registry_killed_mid_upload_then_restarted_resumes_with_what_is_missing(
    tmp_path, registry, env, password, krate_home
):
    artifact, _ = make_artifact(tmp_path / "work", size=300 << 20)
    ref = f"{registry.name}/me/big:1"
    push = subprocess.Popen(
        [KRATE, "push", "app.tar.gz", ref],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while registry.upload_bytes() < (8 << 20):  # mid-way through the big blob
        assert push.poll() is None, push.communicate()
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.01)
    registry.pause()  # freeze it mid-request, then kill it: a crash in the middle of the upload
    registry.kill()
    out, err = push.communicate(timeout=120)
    assert push.returncode == 1, err
    assert "unreachable" in err and out == ""
    assert [e["kind"] for e in events(krate_home, "push.")] == ["push.started", "push.failed"]
    first_failed = events(krate_home, "push.failed")[0]
    assert artifact.digest not in first_failed["uploaded"]
    done_before = set(first_failed["uploaded"])
    assert EMPTY in done_before and len(done_before) == 2  # config and DSSE envelope made it

    registry.start()
    result = run_krate("push", "app.tar.gz", ref, env=env)
    assert result.returncode == 0, result.stderr
    finished = events(krate_home, "push.finished")[0]
    assert finished["uploaded"] == [artifact.digest]  # only what was missing
    assert set(finished["present"]) == done_before
    reader = Reader(registry, USER, password)
    body = json.loads(reader.manifest("me/big", "1")[0])
    assert body["layers"][0]["digest"] == artifact.digest
    assert reader.get(f"/v2/me/big/blobs/{artifact.digest}")[0] == 200


def test_the_password_never_leaves_the_keychain(tmp_path, registry, env, password, krate_home):
    """Not in the database, the data folder, the helper's argv or environment, or any output."""
    make_artifact(tmp_path / "work")
    registry.pause()  # hold the push in flight so its helper can be inspected
    try:
        push = subprocess.Popen(
            [KRATE, "push", "app.tar.gz", f"{registry.name}/me/app:2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        helper = None
        deadline = time.monotonic() + 30
        while helper is None and time.monotonic() < deadline:
            helper = _child_running(push.pid, b"transport.py")
            time.sleep(0.02)
        assert helper is not None, "the transport helper was not seen"
        cmdline = Path(f"/proc/{helper}/cmdline").read_bytes()
        environ = Path(f"/proc/{helper}/environ").read_bytes()
        assert b"-I" in cmdline.split(b"\0") and b"-S" in cmdline.split(b"\0")
        assert password.encode() not in cmdline and password.encode() not in environ
        assert b"PYTHON" not in environ and b"KEYRING" not in environ
        # krate locked itself out of IP sockets right after starting the helper; the helper
        # (started before) is not locked: it is the one process allowed to connect.
        deadline = time.monotonic() + 10
        while _seccomp(push.pid) != "2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _seccomp(push.pid) == "2" and _seccomp(helper) == "0"
    finally:
        registry.resume()
    out, err = push.communicate(timeout=120)
    assert push.returncode == 0, err
    basic = base64.b64encode(f"{USER}:{password}".encode())
    for text in (out, err):
        assert password not in text
    for path in krate_home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert password.encode() not in data, path
            assert basic not in data, path


def _seccomp(pid: int) -> str | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp:"):
            return line.split()[1]
    return None


def _child_running(parent: int, needle: bytes) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and needle in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def test_plain_http_flag_is_announced(tmp_path, registry, env):
    make_artifact(tmp_path / "work")
    result = run_krate("push", "app.tar.gz", f"{registry.name}/me/app:3", "--plain-http", env=env)
    assert result.returncode == 0, result.stderr
    assert "using plain HTTP for" in result.stderr and "as asked (--plain-http)" in result.stderr


def test_https_is_the_default_and_tls_failures_name_host_and_reason(tmp_path, krate_home):
    from tests.registry_server import self_signed_tls

    cert, key = self_signed_tls(tmp_path / "tls")
    reg = Registry(tmp_path / "tls-registry", tls=(cert, key)).start()
    try:
        make_artifact(tmp_path / "work")
        ref = f"{reg.name}/me/app:1"
        untrusted = run_krate("push", "app.tar.gz", ref)
        assert untrusted.returncode == 1
        assert f"TLS certificate of {reg.name} not trusted" in untrusted.stderr
        assert "self-signed" in untrusted.stderr or "self signed" in untrusted.stderr
        trusted = run_krate(
            "push", "app.tar.gz", ref, env={**os.environ, "SSL_CERT_FILE": str(cert)}
        )
        assert trusted.returncode == 0, trusted.stderr
        assert "plain HTTP" not in trusted.stderr  # HTTPS, silently, as it should be
        assert trusted.stdout.strip().startswith("sha256:")
    finally:
        reg.kill()


def test_a_progress_bar_on_a_terminal_only(tmp_path, registry, env):
    """stderr on a pty: rich draws the bar there; stdout (a pipe) still gets just the digest."""
    import pty

    make_artifact(tmp_path / "work", size=24 << 20)
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [KRATE, "push", "app.tar.gz", f"{registry.name}/me/tty:1"],
        env={**env, "COLUMNS": "100"},
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
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
    assert out.decode().strip().startswith("sha256:")
    assert b"dist/app.tar.gz" in drawn and b"MB" in drawn
