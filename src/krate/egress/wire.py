"""The egress proxy's protocol with krate: two lines in (modules, configuration), JSON lines out.

- stdin: one JSON line `{"given": ...}` (its modules, sent at its spawn: it imports
  them while krate prepares the run), then one JSON line of configuration
  (`Config`, sent once the run is prepared); afterwards stdin stays open,
  and its end (krate closed it, or died) means "shut down" (`watch_stdin`).
- stdout: JSON lines. First `{"type": "ready", ...}`, then one
  `{"type": "decision", ...}` per connection when it ends (`Record.line`), last
  `{"type": "closed", ...}`. Decision lines also go to an inherited journal file
  descriptor, so that a killed krate loses none (`Emitter`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time


class Config:
    """The proxy's configuration (plain class: dataclasses would import inspect, ~13 ms)."""

    rules: list[dict]
    listen: str  # "unix:/path" or "tcp:127.0.0.1:0"
    max_connections: int = 256
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    header_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    shutdown_grace: float = 2.0
    threads: bool = True  # relay each connection with two blocking threads (else one selector)
    journal_fd: int | None = None
    socket_uid: int | None = None  # the sandbox's uid when it is not krate's (a root krate)
    given: dict  # krate's policy modules (helperlib.given())
    net_default: tuple[str, str] = ("default: no rule allows it", "builtin:default")
    # network.private_ok: allowed names that may resolve to private addresses (kind, host, rule)
    private_ok: list  # (set per instance: a class-level list would be shared)
    # The loopback listener's per-run credential (`krate:SECRET` in the proxy URL); never
    # reported or recorded. None on the bridge's socket, which only the run's sandbox reaches.
    secret: str | None = None

    FIELDS = (
        "rules", "listen", "max_connections", "connect_timeout", "idle_timeout",
        "header_timeout", "max_header_bytes", "shutdown_grace", "threads", "journal_fd",
        "socket_uid", "given", "net_default", "private_ok", "secret",
    )  # fmt: skip

    def __init__(self, rules: list[dict], listen: str, **given: object) -> None:
        self.rules, self.listen, self.given, self.private_ok = rules, listen, {}, []
        for name, value in given.items():
            if name not in self.FIELDS:
                raise TypeError(f"unknown configuration field {name!r}")
            setattr(self, name, value)

    @classmethod
    def from_dict(cls, raw: dict) -> Config:
        return cls(**{k: raw[k] for k in cls.FIELDS if k in raw})


class Record:
    """What is reported about one connection: metadata only, never contents."""

    def __init__(
        self, n: int, protocol: str = "unknown", host: str | None = None,
        port: int | None = None, reason: str = "",
    ) -> None:  # fmt: skip
        self.n, self.protocol, self.host, self.port = n, protocol, host, port
        self.verdict, self.rule, self.layer, self.reason = "deny", "", "", reason
        self.address: str | None = None
        self.hint = ""  # a denial: the `krate run` flag that would allow it
        self.bytes_up = self.bytes_down = 0
        self.started = time.time()
        self.t0 = time.monotonic()

    def line(self) -> dict:
        return {
            "type": "decision",
            "n": self.n,
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "verdict": self.verdict,
            "rule": self.rule,
            "layer": self.layer,
            "reason": self.reason,
            "address": self.address,
            **({"hint": self.hint} if self.hint else {}),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration_ms": round((time.monotonic() - self.t0) * 1000, 1),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started))
            + f".{int(self.started % 1 * 1e6):06d}Z",
        }


class Emitter:
    """Writes decision lines to stdout (the parent) and the journal (crash safety)."""

    def __init__(self, journal_fd: int | None) -> None:
        self.journal_fd = journal_fd
        self.stdout_ok = True
        self.lock = threading.Lock()  # one line at a time: every connection has its thread

    def __call__(self, line: dict) -> None:
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        with self.lock:
            self.write(line, data)

    def write(self, line: dict, data: bytes) -> None:
        if self.journal_fd is not None and line.get("type") == "decision":
            with contextlib.suppress(OSError):
                os.write(self.journal_fd, data)
        if self.stdout_ok:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view) :]
            except OSError:
                self.stdout_ok = False  # the parent is gone; the journal keeps the record

    def ready(self, config: Config, address: object) -> None:
        self(
            {
                "type": "ready",
                "listen": config.listen,
                "port": address,
                "pid": os.getpid(),
                "python": import_report(),
            }
        )


def watch_stdin(stop: threading.Event) -> None:
    """Set `stop` when stdin ends (krate finished, or died); run in a daemon thread."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()


def import_report() -> dict:
    """What this process can import and what it did: its sys.path and its loaded modules' files.

    (The transport has the same few lines: neither helper may import the other.)
    """
    loaded = list(sys.modules.values())
    files = {getattr(m, "__file__", None) for m in loaded}
    given = sorted(m.__name__ for m in loaded if m.__name__.partition(".")[0] == "krate")
    return {
        "path": list(sys.path),
        "files": sorted(f for f in files if isinstance(f, str)),
        "given": given,
    }
