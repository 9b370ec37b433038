"""`krate image pull` against a registry that lies: a small HTTP server written for the attack.

A real registry refuses to store most of these lies (a manifest naming a path as a
digest, bytes that do not match their digest), so this server serves them: what
the test sets in `routes` is what krate gets. Each test attacks through the
installed `krate` and checks both that the pull failed or held, and that nothing
landed where it must not (outside the store, in the store, on the record).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import run_krate
from tests.registry_images import OCI_INDEX, OCI_MANIFEST, image, layer
from tests.registry_support import events

USER, PASSWORD = "me", "fake-registry-pw"
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64")
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Fake:
    """Serves `routes` (path -> status, headers, body) on loopback; records every request."""

    def __init__(self, need_auth: bool = True) -> None:
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.seen: list[tuple[str, str, str | None]] = []
        self.need_auth = need_auth
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:
                auth = self.headers.get("Authorization")
                fake.seen.append((self.command, self.path, auth))
                if fake.need_auth and auth != BASIC:
                    status, headers, data = 401, {"WWW-Authenticate": 'Basic realm="fake"'}, b""
                elif self.path == "/v2/":
                    status, headers, data = 200, {}, b"{}"
                else:
                    status, headers, data = fake.routes.get(
                        self.path, (404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                    )
                self.send_response(status)
                headers = dict(headers)
                if "Content-Length" not in headers:
                    headers["Content-Length"] = str(len(data))
                for name, value in headers.items():
                    if value is not None:  # None: leave the header out
                        self.send_header(name, value)
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.name = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def manifest(self, repo: str, ref: str, body: bytes, media: str = OCI_MANIFEST) -> None:
        self.routes[f"/v2/{repo}/manifests/{ref}"] = (200, {"Content-Type": media}, body)

    def blob(self, repo: str, data: bytes, digest: str | None = None, **headers) -> None:
        self.routes[f"/v2/{repo}/blobs/{digest or sha(data)}"] = (200, headers, data)

    def image(self, repo: str, tag: str, img) -> None:
        self.manifest(repo, tag, img.manifest)
        self.manifest(repo, img.digest, img.manifest)
        for data in img.blobs.values():
            self.blob(repo, data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(keychain):
    server = Fake()
    yield server
    server.stop()


@pytest.fixture
def env(fake, keychain):
    env = keychain.env()
    login = run_krate(
        "login", fake.name, "-u", USER, "--password-stdin", "--plain-http", input=PASSWORD,
        env=env,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    return env


def pull(ref: str, env):
    return run_krate("image", "pull", ref, "--plain-http", env=env)


def error(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if "using plain HTTP for" not in ln]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("krate: ") and "Traceback" not in result.stderr
    return lines[0]


def store_names(home) -> list[str]:
    folder = home / "artifacts" / "sha256"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def tampered(img, **layer_fields) -> bytes:
    doc = json.loads(img.manifest)
    doc["layers"][0].update(layer_fields)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../../../escaped",
        "sha256:" + "a" * 64 + "\n",
        "sha256:" + "a" * 64 + "/../../x",
        "sha256:" + "A" * 64,
    ],
)
def test_a_digest_that_is_a_path_never_becomes_one(fake, env, krate_home, tmp_path, digest):
    img = image([layer({"a": b"a"})])
    fake.image("me/evil", "1", img)
    fake.manifest("me/evil", "1", tampered(img, digest=digest))
    result = pull(f"{fake.name}/me/evil:1", env)
    line = error(result)
    assert "has no valid sha256 digest" in line
    assert not (krate_home / "escaped").exists() and not (krate_home / "artifacts/x").exists()
    assert not any(".." in p for _m, p, _a in fake.seen)  # never asked for such a URL either
    assert all(len(n) == 64 for n in store_names(krate_home))
    assert events(krate_home, "image.") == []


def test_a_manifest_fetched_by_digest_must_hash_to_it(fake, env, krate_home):
    img = image([layer({"a": b"a"})])
    fake.image("me/pin", "1", img)
    liar = image([layer({"a": b"something else"})])
    fake.manifest("me/pin", img.digest, liar.manifest)  # served under the other's digest
    result = pull(f"{fake.name}/me/pin@{img.digest}", env)
    assert f"hashes to {liar.digest}; refused" in error(result)
    assert store_names(krate_home) == []


def test_an_index_entry_served_with_other_bytes_is_refused(fake, env, krate_home):
    here = image([layer({"a": b"a"})], arch=HOST_ARCH)
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [here.descriptor()]}
    ).encode()
    fake.manifest("me/idx", "1", index, OCI_INDEX)
    fake.manifest("me/idx", here.digest, here.manifest + b" ")  # not what the index named
    result = pull(f"{fake.name}/me/idx:1", env)
    assert "refused" in error(result)
    assert store_names(krate_home) == []


@pytest.mark.parametrize("how", ["longer", "chunked longer", "shorter chunked"])
def test_a_blob_that_does_not_match_its_size_is_not_kept(fake, env, krate_home, how):
    data = os.urandom(50_000)
    img = image([(data, b"")])  # a layer's bytes need not be a tar for the pull
    fake.image("me/size", "1", img)
    digest = img.layers[0]
    if how == "longer":
        fake.blob("me/size", data + b"more", digest)
    else:
        body = data + b"more" if how == "chunked longer" else data[:-100]
        chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        fake.routes[f"/v2/me/size/blobs/{digest}"] = (
            200,
            {"Transfer-Encoding": "chunked", "Content-Length": None},
            chunked,
        )
    result = pull(f"{fake.name}/me/size:1", env)
    line = error(result)
    assert f"blob {digest[:19]} failed its check" in line
    assert digest[7:] not in store_names(krate_home)
    assert not [n for n in store_names(krate_home) if n.startswith(".")]


BIG = 18 << 20  # > transport_blobs.SYNC_STEP (an early flush starts) and many read buffers


@pytest.mark.parametrize(
    "how", ["last byte flipped", "one byte more", "one byte short", "declared one byte more"]
)
def test_a_large_blob_wrong_at_its_end_leaves_nothing_while_others_stream(
    fake, env, krate_home, how
):
    """Three multi-MiB layers download at once (a thread each, flushed to disk early); the
    middle one is wrong only at its end: its last byte, one byte too many or too few once
    every earlier buffer has been hashed and written, or a Content-Length one byte long."""
    layers = [(os.urandom(BIG), b"") for _ in range(3)]
    img = image(layers)
    fake.image("me/big", "1", img)
    victim = img.layers[1]
    data = layers[1][0]
    route = f"/v2/me/big/blobs/{victim}"
    if how == "last byte flipped":
        fake.routes[route] = (200, {}, data[:-1] + bytes([data[-1] ^ 0x01]))
    elif how == "declared one byte more":
        fake.routes[route] = (200, {}, data + b"x")
    else:
        body = data + b"x" if how == "one byte more" else data[:-1]
        chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        fake.routes[route] = (
            200,
            {"Transfer-Encoding": "chunked", "Content-Length": None},
            chunked,
        )
    result = pull(f"{fake.name}/me/big:1", env)
    line = error(result)
    assert f"blob {victim[:19]} failed its check" in line and "nothing of it was kept" in line
    assert victim[7:] not in store_names(krate_home)
    assert not [n for n in store_names(krate_home) if n.startswith(".")]  # no temp file
    assert events(krate_home, "image.") == []


def test_a_blob_redirect_is_followed_without_credentials(fake, env, krate_home):
    """ghcr.io, Docker Hub and most registries serve layers from a storage host."""
    storage = Fake(need_auth=False)
    try:
        img = image([layer({"a": os.urandom(20_000)})])
        fake.image("me/cdn", "1", img)
        digest = img.layers[0]
        storage.blob("x", img.blobs[digest], "signed")  # /v2/x/blobs/signed
        fake.routes[f"/v2/me/cdn/blobs/{digest}"] = (
            307,
            {"Location": f"http://127.0.0.1:{storage.port}/v2/x/blobs/signed"},
            b"",
        )
        result = pull(f"{fake.name}/me/cdn:1", env)
        assert result.returncode == 0, result.stderr
        assert digest[7:] in store_names(krate_home)
        ((method, path, auth),) = storage.seen
        assert (method, path, auth) == ("GET", "/v2/x/blobs/signed", None)  # no credentials
        egress = {(e["host"], e["port"]) for e in events(krate_home, "network.egress")}
        assert ("127.0.0.1", storage.port) in egress  # on the record like any connection
    finally:
        storage.stop()


def test_a_blob_redirect_to_plain_http_elsewhere_is_refused(fake, env, krate_home):
    img = image([layer({"a": b"a"})])
    fake.image("me/away", "1", img)
    fake.routes[f"/v2/me/away/blobs/{img.layers[0]}"] = (
        302,
        {"Location": "http://192.0.2.7/blob"},  # TEST-NET-1: never reachable
        b"",
    )
    result = pull(f"{fake.name}/me/away:1", env)
    assert "redirected a blob to plain HTTP at 192.0.2.7:80; refused" in error(result)
    hosts = {e["host"] for e in events(krate_home, "network.egress")}
    assert "192.0.2.7" not in hosts
