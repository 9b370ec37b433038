"""Shared pieces for the egress tests: loopback servers, policies, reading recorded decisions."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

from krate.paths import Paths
from krate.policy import Flags, effective_policy
from krate.store import events, open_store

BWRAP = shutil.which("bwrap")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.heads.append(str(self.headers))  # what reached the origin (no proxy auth)
        body = f"hello from {self.server.server_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class Server:
    """An HTTP server on 127.0.0.1 (port chosen by the kernel), stopped by `close()`."""

    def __init__(self, bind: str = "127.0.0.1") -> None:
        self.httpd = http.server.ThreadingHTTPServer((bind, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.heads = []
        self.heads: list[str] = self.httpd.heads
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class EchoCount:
    """Reads until EOF, then answers with the number of bytes read (tests half-close)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn: socket.socket) -> None:
        with conn:
            total = 0
            while data := conn.recv(65536):
                total += len(data)
            conn.sendall(f"got {total}".encode())

    def close(self) -> None:
        self.sock.close()


def policy(tmp_path: Path, *allow: str, profile: str = "strict"):
    """A real effective policy: a built-in profile plus `--allow-host` flags."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return effective_policy(
        workspace=tmp_path,
        home=home,
        user_policy_path=home / "no-policy.toml",
        trusted={},
        flags=Flags(policy=profile, allow_host=tuple(allow)),
    )


def decisions(paths: Paths, run_id: str | None = None) -> list[dict]:
    with open_store(paths, readonly=True) as store:
        return [
            e.data
            for e in events.query(store, kind_prefix="policy.decision", run_id=run_id)
            if e.data.get("area") == "network"
        ]


def all_event_text(paths: Paths) -> str:
    with open_store(paths, readonly=True) as store:
        return "\n".join(json.dumps(e.to_dict()) for e in events.iter_all(store))
