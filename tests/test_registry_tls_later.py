"""A loopback registry is tried over HTTPS before plain HTTP without reading the system's CA
certificates first (20 to 40 ms of CPU on every `krate image pull localhost:5000/...`);
one that does speak TLS is still verified exactly as before: against the system's
anchors (and SSL_CERT_FILE), never falling back to plain HTTP over a TLS failure.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from krate.registry import early
from tests.registry_server import self_signed_tls
from tests.test_registry_transport import TRANSPORT, load_transport


class Answering(BaseHTTPRequestHandler):
    """`GET /v2/` -> 200 `{}`; counts the requests it read."""

    seen: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        Answering.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def _serve(tls: tuple | None = None) -> ThreadingHTTPServer:
    Answering.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _transport(job: dict, env: dict | None = None) -> tuple[int, list[dict]]:
    """The transport as krate starts it for a loopback registry (`--tls-later`)."""
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(TRANSPORT), early.TLS_LATER],
        input=json.dumps(job).encode(),
        capture_output=True,
        env=env or {},
        timeout=120,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def _job(port: int) -> dict:
    return {
        "op": "login",
        "registry": f"127.0.0.1:{port}",
        "scheme": "https",
        "http_fallback": True,
        "retries": 0,
    }


def test_a_plain_http_loopback_registry_is_reached_without_loading_the_ca_certificates():
    anchors = ssl.create_default_context().cert_store_stats()["x509_ca"]
    if not anchors:
        pytest.skip("this system's default CA file is empty (or only a hashed folder)")
    t = load_transport()
    server = _serve()
    try:
        client = t.Client(_job(server.server_address[1]))
        client.begin()
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert client.pool.scheme == "http" and Answering.seen == ["/v2/"]
    assert not client.pool.anchored
    assert client.pool.context.cert_store_stats()["x509_ca"] == 0


def test_the_context_without_anchors_checks_as_the_default_one_and_anchors_to_it():
    t = load_transport()
    http = sys.modules["krate.registry.transport_http"]
    default, bare = ssl.create_default_context(), http.unanchored_context()
    for name in (
        "protocol",
        "verify_mode",
        "check_hostname",
        "verify_flags",
        "options",
        "minimum_version",
        "maximum_version",
    ):
        assert getattr(bare, name) == getattr(default, name), name
    pool = t.Pool("127.0.0.1:5000", "https", {"http_fallback": True})
    assert pool.context.cert_store_stats()["x509_ca"] == 0
    pool.anchor()
    assert pool.anchored
    assert pool.context.get_ca_certs() == default.get_ca_certs()
    remote = t.Pool("registry.example", "https", {})  # no fallback: anchored from the start
    assert remote.anchored and remote.context.get_ca_certs() == default.get_ca_certs()


def test_a_tls_loopback_registry_is_verified_and_never_falls_back_to_plain_http(tmp_path):
    """Untrusted certificate: refused, nothing read by the server, no plain-HTTP retry.
    Trusted through SSL_CERT_FILE (loaded with the system's anchors): used over HTTPS."""
    cert, key = self_signed_tls(tmp_path / "tls")
    server = _serve((str(cert), str(key)))
    port = server.server_address[1]
    try:
        code, lines = _transport(_job(port))
        assert code == 1, lines
        assert lines[-1]["code"] == "tls" and "not trusted" in lines[-1]["message"]
        assert not any(m["type"] == "notice" for m in lines)  # no plain-HTTP fallback
        assert Answering.seen == []  # no request ever left krate
        egress = [m for m in lines if m["type"] == "egress"]
        assert egress and all(m["port"] == port for m in egress)

        code, lines = _transport(_job(port), env={"SSL_CERT_FILE": str(cert)})
        assert code == 0, lines
        assert lines[-1] == {"type": "done", "ok": True, "auth": "none"}
        assert not any(m["type"] == "notice" for m in lines)
        assert Answering.seen == ["/v2/"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("word", "loopback"),
    [
        ("localhost:5000/me/app:1", True),
        ("LOCALHOST/app", True),
        ("127.0.0.1:5000/app@sha256:00", True),
        ("127.0.0.1:5000", True),
        ("[::1]:5000/app", True),
        ("ghcr.io/me/app:1", False),
        ("127.example.com/app", False),
        ("localhost.example.com:5000/app", False),
        ("--plain-http", False),
        ("image", False),
    ],
)
def test_the_hint_names_loopback_registries_only(word, loopback):
    assert early.names_loopback(word) is loopback
