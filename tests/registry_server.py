"""A real OCI registry on loopback for the login/push tests, and a small token server.

`Registry` runs Debian's `docker-registry` (the CNCF distribution server, 2.8.x)
on a free 127.0.0.1 port with filesystem storage in a temporary folder and, as
asked, htpasswd (bcrypt, made with `htpasswd -B`), token auth, or TLS. It can be
stopped, killed (SIGKILL) and restarted on the same port and storage.

`TokenServer` is the Bearer flow's other half: it checks Basic credentials and
issues RS256 JWTs (certificate in `x5c`, trusted by the registry through its
`rootcertbundle`) granting each user only the actions configured for them.

`Reader` reads manifests and blobs back over plain HTTP, as a test would, to
check what krate pushed. Everything here is test code; krate never imports it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

REGISTRY_BIN = shutil.which("docker-registry")
HTPASSWD_BIN = shutil.which("htpasswd")
needs_registry = pytest.mark.skipif(
    REGISTRY_BIN is None or HTPASSWD_BIN is None,
    reason="docker-registry and htpasswd (apache2-utils) are needed; .ci/run installs them",
)
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def htpasswd_line(user: str, password: str) -> str:
    out = subprocess.run(
        [HTPASSWD_BIN, "-Bbn", user, password], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() + "\n"


class Registry:
    """One `docker-registry serve` process; `auth` is None, "htpasswd" or a TokenServer."""

    def __init__(
        self,
        root: Path,
        *,
        users: dict[str, str] | None = None,
        token: TokenServer | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.root = root
        self.storage = root / "storage"
        self.port = free_port()
        self.users = users or {}
        self.token = token
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.log = root / "registry.log"
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.yml"
        self._write_config()

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: krate-test-secret",
        ]
        if self.tls:
            cert, key = self.tls
            lines += ["  tls:", f"    certificate: {cert}", f"    key: {key}"]
        if self.users:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) for u, p in self.users.items()))
            lines += ["auth:", "  htpasswd:", "    realm: krate-test", f"    path: {htpasswd}"]
        elif self.token:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token.realm}",
                f"    service: {self.token.service}",
                f"    issuer: {self.token.issuer}",
                f"    rootcertbundle: {self.token.cert_path}",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> Registry:
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(self.config)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("docker-registry exited: " + self.log.read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the registry vanishes mid-request, as a crash or power cut would."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def upload_bytes(self) -> int:
        """Bytes sitting in unfinished uploads (the registry's `_uploads` folders)."""
        total = 0
        for path in self.storage.rglob("_uploads/*/data"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total


class Reader:
    """Fetch manifests and blobs back over plain HTTP, the way a test checks a push."""

    def __init__(self, registry: Registry, user: str | None = None, password: str | None = None):
        self.registry = registry
        self.auth = None
        if user is not None:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.auth = "Basic " + pair

    def get(self, path: str, accept: str | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.registry.port, timeout=30)
        headers = {}
        if self.auth:
            headers["Authorization"] = self.auth
        if accept:
            headers["Accept"] = accept
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), body

    def manifest(self, repo: str, ref: str, accept: str = MANIFEST) -> tuple[bytes, dict]:
        status, headers, body = self.get(f"/v2/{repo}/manifests/{ref}", accept=accept)
        assert status == 200, (status, body[:300])
        return body, headers

    def blob(self, repo: str, digest: str) -> bytes:
        status, _, body = self.get(f"/v2/{repo}/blobs/{digest}")
        assert status == 200, (status, body[:300])
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        return body

    def has_blob(self, repo: str, digest: str) -> bool:
        return self.get(f"/v2/{repo}/blobs/{digest}")[0] == 200


# -- Bearer token service -------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues RS256 JWTs for the registry's token auth; `grants` maps user -> actions."""

    service = "krate-test-registry"
    issuer = "krate-test-issuer"

    def __init__(self, root: Path, users: dict[str, tuple[str, list[str]]]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.requests: list[dict] = []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "krate test token issuer")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        root.mkdir(parents=True, exist_ok=True)
        self.cert_path = root / "token-root.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._hashes = hashes
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> TokenServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sign(self, claims: dict) -> str:
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), self._hashes.SHA256())
        return signing_input + "." + _b64url(sig)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if name in server.users and server.users[name][0] == password:
                        user = name
                server.requests.append(
                    {"user": user, "scope": query.get("scope", []), "service": query.get("service")}
                )
                if parts.path != "/token" or user is None:
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"details":"invalid credentials"}')
                    return
                allowed = server.users[user][1]
                access = []
                for scope in query.get("scope", []):
                    kind, name, actions = scope.split(":")
                    granted = [a for a in actions.split(",") if a in allowed]
                    access.append({"type": kind, "name": name, "actions": granted})
                now = int(time.time())
                token = server.sign(
                    {
                        "iss": server.issuer,
                        "sub": user,
                        "aud": server.service,
                        "exp": now + 300,
                        "nbf": now - 10,
                        "iat": now,
                        "jti": uuid.uuid4().hex,
                        "access": access,
                    }
                )
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def self_signed_tls(root: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, for the HTTPS tests."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    root.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = root / "tls.crt", root / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
