"""The registry transport helper on its own, and the names krate accepts.

The helper runs exactly as krate starts it (`python -I -S transport.py`, job on
stdin). A hostile registry that tries to send krate elsewhere is refused, and the
refusal is on the record.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from krate.errors import UsageError
from krate.registry import client, transport_auth
from krate.registry.keychain import backend_name
from tests.conftest import KRATE, run_krate
from tests.registry_server import Reader, Registry, free_port, needs_registry
from tests.registry_support import events, make_artifact

TRANSPORT = Path(client.__file__).with_name("transport.py")


def load_transport():
    spec = importlib.util.spec_from_file_location("krate_transport_under_test", TRANSPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_transport(job: dict) -> tuple[int, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(TRANSPORT)],
        input=json.dumps(job).encode(),
        capture_output=True,
        env={},
        timeout=120,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_challenge_parsing_keeps_quoted_commas():
    scheme, params = transport_auth.parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
    }
    assert transport_auth.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_upload_url_keeps_its_query_verbatim():
    t = load_transport()
    loc = "http://r:5000/v2/a/blobs/uploads/u?_state=abc%3D%3D"
    assert t.with_digest(loc, "sha256:00") == loc + "&digest=sha256%3A00"


def test_the_transport_imports_nothing_outside_the_standard_library():
    """It runs without site-packages: prove it by running it with -I -S on an empty job."""
    code, lines = run_transport({"op": "nothing", "registry": "x", "scheme": "https"})
    assert code == 1 and lines[-1]["code"] == "bad_job"


@needs_registry
def test_large_blobs_go_up_in_chunks_and_arrive_intact(tmp_path):
    reg = Registry(tmp_path / "registry").start()
    try:
        data = os.urandom((5 << 20) + 12345)
        blob = tmp_path / "blob.bin"
        blob.write_bytes(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        code, lines = run_transport(
            {
                "op": "push",
                "registry": reg.name,
                "scheme": "http",
                "repository": "me/chunks",
                "blobs": [{"digest": digest, "size": len(data), "path": str(blob)}],
                "manifests": [],
                "chunk_size": 1 << 20,
                "chunk_threshold": 1 << 20,
            }
        )
        assert code == 0, lines
        progress = [m for m in lines if m["type"] == "progress"]
        assert progress[-1] == {
            "type": "progress",
            "digest": digest,
            "done": len(data),
            "total": len(data),
        }
        assert Reader(reg).blob("me/chunks", digest) == data
        (uploaded,) = [m for m in lines if m["type"] == "blob"]
        assert uploaded["status"] == "uploaded" and uploaded["sent"] == len(data)
    finally:
        reg.kill()


class Quiet(BaseHTTPRequestHandler):
    """A test server's handler: no request log, empty replies."""

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Hostile(Quiet):
    """A 'registry' that tries to send the upload (and its Authorization) elsewhere."""

    elsewhere = "http://203.0.113.7:80/v2/steal?x=1"

    def do_GET(self) -> None:
        self._reply(200)

    def do_HEAD(self) -> None:
        self._reply(404)

    def do_POST(self) -> None:
        self._reply(202, {"Location": self.elsewhere})


@pytest.fixture
def hostile():
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port
    server.shutdown()
    server.server_close()


def test_a_registry_sending_krate_elsewhere_is_refused_and_recorded(tmp_path, hostile, krate_home):
    make_artifact(tmp_path / "work")
    result = run_krate("push", "app.tar.gz", f"127.0.0.1:{hostile}/me/app:1", "--plain-http")
    assert result.returncode == 1
    assert "sent krate to 203.0.113.7:80" in result.stderr and "refused" in result.stderr
    egress = events(krate_home, "network.egress")
    assert {"host": "203.0.113.7", "port": 80, "outcome": "refused"}.items() <= next(
        e for e in egress if e["host"] == "203.0.113.7"
    ).items()
    assert all(e["outcome"] != "connected" or e["host"] == "127.0.0.1" for e in egress)
    assert events(krate_home, "push.failed")[0]["error"] == "refused_destination"


def test_a_plain_http_token_realm_elsewhere_is_refused():
    t = load_transport()
    c = t.Client({"registry": "ghcr.io", "scheme": "https", "username": "u", "password": "p"})

    class R:
        status = 401

        def header(self, name):
            return 'Bearer realm="http://evil.example/token",service="x"'

    with pytest.raises(t.Failure) as caught:
        c.auth.learn(R().header("WWW-Authenticate"), c.pool.scheme)
    assert caught.value.code == "protocol" and "plain-HTTP token service" in str(caught.value)
    assert ("evil.example", 80) not in c.pool.allowed


class Reflecting(Quiet):
    """Asks for Basic auth, then holds one authenticated request and echoes its credential.

    `reflect` names the method that is held and answered 403 with the Authorization value
    in its error and a header; the other requests succeed (GET /v2/ 200, HEAD 404).
    """

    reflect = "GET"
    seen: list[str] = []
    holding = threading.Event()
    go_on = threading.Event()

    def _auth(self) -> str | None:
        auth = self.headers.get("Authorization")
        if auth is None:
            self._reply(401, {"WWW-Authenticate": 'Basic realm="reflect"'})
        else:
            Reflecting.seen.append(auth)
        return auth

    def _answer(self, method: str, ok: int) -> None:
        auth = self._auth()
        if auth is None:
            return
        if method != Reflecting.reflect:
            self._reply(ok)
            return
        Reflecting.holding.set()
        Reflecting.go_on.wait(30)  # while krate waits here, its processes are inspected
        body = json.dumps({"errors": [{"code": "DENIED", "message": auth}]}).encode()
        self.send_response(403)
        self.send_header("X-Echo", auth)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer("GET", 200)

    def do_HEAD(self) -> None:
        self._answer("HEAD", 404)

    def do_POST(self) -> None:
        self._answer("POST", 202)


def _tree(root: int) -> list[int]:
    """`root` and every process descending from it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


@pytest.mark.parametrize("command", ["login", "push"])
def test_basic_credentials_are_never_put_in_the_output(tmp_path, krate_home, keychain, command):
    """A registry that echoes the Authorization header back in its error.

    The password and its Basic form (base64 of user:password, which is the password in
    plain sight) must be in no output, no file krate wrote (database, WAL, journals),
    and no process argument or environment of krate or its helper.
    """
    password = "pw-" + os.urandom(12).hex()
    basic = base64.b64encode(f"me:{password}".encode()).decode()
    Reflecting.seen, Reflecting.holding, Reflecting.go_on = [], threading.Event(), threading.Event()
    Reflecting.reflect = "GET" if command == "login" else "POST"
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Reflecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = keychain.env()
    login = [KRATE, "login", f"127.0.0.1:{port}", "-u", "me", "--password-stdin", "--plain-http"]
    outputs = []
    try:
        if command == "push":
            done = subprocess.run(login, env=env, input=password, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            outputs += [done.stdout, done.stderr]
            make_artifact(tmp_path / "work")
            argv = [KRATE, "push", "app.tar.gz", f"127.0.0.1:{port}/me/app:1", "--plain-http"]
        else:
            argv = login
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        proc.stdin.write(password + "\n" if command == "login" else "")
        proc.stdin.close()
        assert Reflecting.holding.wait(60), proc.communicate()
        processes = _tree(proc.pid)
        assert len(processes) >= 2, "the transport helper was not seen"
        for pid in processes:
            for what in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue
                assert password.encode() not in data and basic.encode() not in data, (pid, what)
        Reflecting.go_on.set()
        out, err = proc.stdout.read(), proc.stderr.read()
        assert proc.wait(timeout=60) == 1, err
        outputs += [out, err]
    finally:
        Reflecting.go_on.set()
        server.shutdown()
        server.server_close()
    assert Reflecting.seen and set(Reflecting.seen) == {"Basic " + basic}  # it was really sent
    assert "krate: " in err and "denied" in err and "DENIED: Basic ***" in err, err
    for text in outputs:
        assert password not in text and basic not in text, text
    written = [p for p in krate_home.rglob("*") if p.is_file()]
    assert krate_home / "krate.db" in written
    for path in written:
        data = path.read_bytes()
        assert password.encode() not in data and basic.encode() not in data, path


def test_the_basic_header_encodes_user_and_password():
    t = load_transport()
    c = t.Client({"registry": "r.example", "scheme": "https", "username": "u", "password": "pw"})
    assert c.auth.basic() == "Basic " + base64.b64encode(b"u:pw").decode()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ghcr.io/me/app:1.0", ("ghcr.io", "me/app", "1.0")),
        ("localhost:5000/app", ("localhost:5000", "app", "latest")),
        ("127.0.0.1:5000/a/b/c:v_1", ("127.0.0.1:5000", "a/b/c", "v_1")),
        ("[::1]:5000/x:1", ("[::1]:5000", "x", "1")),
        ("Registry.Example.com/x:1", ("registry.example.com", "x", "1")),
    ],
)
def test_references(text, expected):
    ref = client.parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag) == expected


@pytest.mark.parametrize(
    "text", ["app:1", "ghcr.io", "ghcr.io/", "ghcr.io/UPPER:1", "ghcr.io/a:b:c/d", "http://x.io/a"]
)
def test_bad_references(text):
    with pytest.raises(UsageError):
        client.parse_reference(text)


def test_https_unless_loopback_or_asked():
    assert client.connection_for("ghcr.io", False) == client.Connection("https", False, None)
    local = client.connection_for("127.0.0.1:5000", False)
    assert local.scheme == "https" and local.http_fallback  # falls back, and says so
    assert client.connection_for("[::1]:5000", False).http_fallback
    assert client.connection_for("localhost:5000", False).http_fallback
    forced = client.connection_for("10.0.0.5:5000", True)
    assert forced.scheme == "http" and "--plain-http" in forced.warning


def test_the_helper_gets_no_environment_but_the_ca_overrides():
    env = client.child_env(
        {"SSL_CERT_FILE": "/ca.pem", "HOME": "/root", "PYTHONPATH": "/x", "TOKEN": "secret"}
    )
    assert env == {"SSL_CERT_FILE": "/ca.pem"}


def test_keyring_backend_is_chosen_per_platform_and_overridable():
    assert backend_name({}, "darwin") == "keyring.backends.macOS.Keyring"
    assert backend_name({}, "linux") == "keyring.backends.SecretService.Keyring"
    assert backend_name({"PYTHON_KEYRING_BACKEND": "a.B"}, "darwin") == "a.B"


def test_plaintext_and_fail_backends_are_refused():
    from krate.errors import KrateError
    from krate.registry.keychain import open_keychain

    for name in ("keyrings.alt.file.PlaintextKeyring", "keyring.backends.fail.Keyring"):
        with pytest.raises(KrateError, match="only there"):
            open_keychain(name)


class Flaky(Quiet):
    """Answers 503 to the first two API checks, then behaves; counts what it saw."""

    seen: list[str] = []

    def do_GET(self) -> None:
        Flaky.seen.append("GET " + self.path)
        self._reply(503 if Flaky.seen.count("GET /v2/") <= 2 else 200)

    def do_HEAD(self) -> None:
        Flaky.seen.append("HEAD")
        self._reply(200)

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Flaky.seen.append("PUT")
        self._reply(201, {"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})


def test_5xx_answers_are_retried_with_backoff_and_present_blobs_skipped():
    port = free_port()
    Flaky.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", port), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        manifest = b'{"schemaVersion":2}'
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        code, lines = run_transport(
            {
                "op": "push",
                "registry": f"127.0.0.1:{port}",
                "scheme": "http",
                "repository": "me/app",
                "backoff": 0.05,
                "blobs": [{"digest": "sha256:" + "0" * 64, "size": 5, "path": "/nonexistent"}],
                "manifests": [
                    {
                        "reference": "1",
                        "digest": digest,
                        "media_type": "application/vnd.oci.image.manifest.v1+json",
                        "data": base64.b64encode(manifest).decode(),
                    }
                ],
            }
        )
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, lines
    assert Flaky.seen[:3] == ["GET /v2/"] * 3 and Flaky.seen[3:] == ["HEAD", "PUT"]
    assert [m["status"] for m in lines if m["type"] == "blob"] == ["present"]
    assert lines[-1]["type"] == "done"


@pytest.mark.parametrize("body", [b"[]", b'{"manifests": "x"}', b'{"manifests": [1]}', b"{"])
def test_a_referrers_tag_that_is_not_an_index_is_refused_not_crashed_on(body):
    """A real check, not an assert (gone under -O); entries that are not objects too."""
    t = load_transport()

    class Answer:
        status = 200

        def __init__(self) -> None:
            self.body = body

    class FakeClient:
        registry = "r.example"

        def call(self, *args, **kw):
            return Answer()

        def check(self, resp, *args):
            return resp

    pusher = t.Pusher(FakeClient(), {"repository": "a/b"})
    with pytest.raises(t.Failure) as caught:
        pusher.referrers_index("sha256-00")
    assert caught.value.code == "protocol" and "is not an index" in str(caught.value)


def test_krate_names_exactly_the_files_the_transport_loads():
    t = load_transport()
    assert client.TRANSPORT_PARTS == t.PARTS
    assert all(f.is_file() for f in client.TRANSPORT_FILES)


def test_the_tls_context_made_in_a_thread_since_start_is_the_one_used(tmp_path):
    """transport.py starts making the TLS context (CA certificates read without the GIL)
    before its parts import; a connection waits for it, and makes its own if it failed."""
    import ssl
    import threading

    transport = load_transport()
    http = sys.modules["krate.registry.transport_http"]
    made: list = []
    gate = threading.Event()

    def make():
        gate.wait(5)
        made.append(ssl.create_default_context())

    thread = threading.Thread(target=make, daemon=True)
    thread.start()
    http.warm((thread, made))
    gate.set()
    context = http.tls_context()
    assert not thread.is_alive() and made == [context]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    failed = threading.Thread(target=lambda: None)
    failed.start()
    http.warm((failed, []))  # the thread made nothing: made again where errors are reported
    assert http.tls_context().verify_mode == ssl.CERT_REQUIRED
    assert transport._early_tls is None  # loaded as a module, not run: nothing started early


def test_a_pull_temp_file_is_new_private_and_never_a_planted_link(tmp_path, monkeypatch):
    """BlobDir.temp replaces tempfile.mkstemp (not loaded by the transport any more): each
    call creates a new, empty 0600 file of this process; a name already taken, even by a
    symlink pointing outside, is skipped, never opened."""
    from krate.registry import transport_blobs

    root = tmp_path / "sha256"
    root.mkdir()
    outside = tmp_path / "outside"
    taken = root / f"{transport_blobs.TEMP_PREFIX}{os.getpid()}-{'00' * 6}"
    taken.symlink_to(outside)
    draws = iter([b"\0" * 6, b"\1" * 6])
    monkeypatch.setattr(transport_blobs.os, "urandom", lambda n: next(draws))
    fd, name = transport_blobs.BlobDir(str(root)).temp()
    try:
        info = os.fstat(fd)
        assert name == str(root / f"{transport_blobs.TEMP_PREFIX}{os.getpid()}-{'01' * 6}")
        assert (info.st_mode & 0o7777, info.st_size) == (0o600, 0)
        assert os.path.samestat(info, os.lstat(name))
        assert not outside.exists() and taken.is_symlink()
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_the_transport_loads_no_tempfile_module():
    """Its start is on the path of every pull (krate waits for it): tempfile (with shutil)
    cost some 2 ms of it and only made one temp file name."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(TRANSPORT), "--tls-later"],
        input=b'{"op": "report"}\n', capture_output=True, check=True, env={},
    )  # fmt: skip
    files = json.loads(done.stdout.splitlines()[-1])["python"]["files"]
    assert not [f for f in files if os.path.basename(f) in ("tempfile.py", "shutil.py")], files


def test_the_loopback_context_made_before_the_job_trusts_nothing_more_and_is_used_once():
    """warm_loopback (a loopback registry: before the job arrives) makes the same unanchored
    context the first HTTPS attempt would make: certificate and host name required, no CA
    certificate loaded; a second Pool gets a new one (a job's own CA never carries over)."""
    import ssl

    from krate.registry import transport_http

    transport_http.warm_loopback()
    first = transport_http.Pool("localhost:5000", "https", {"http_fallback": True}).context
    again = transport_http.Pool("localhost:5000", "https", {"http_fallback": True}).context
    for context in (first, again):
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.cert_store_stats()["x509_ca"] == 0
    assert first is not again and not transport_http._unanchored
