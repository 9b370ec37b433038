"""krate's own egress ledger: one `network.egress` event per connection a helper made.

The network helpers (the registry transport for `login`/`push`; later any other
helper krate starts for its own purposes) are separate processes; the parent
krate process, locked out of the network, learns what they did from JSON lines
on a pipe and appends each one to the event chain with the command that asked.
Workload connections through the egress proxy are *not* recorded here: they are
`policy.decision` events (krate.egress.recorder), listed separately.

Protocol (helper -> parent), one UTF-8 JSON object per line:

    {"type": "egress", "host": "ghcr.io", "port": 443, "outcome": "connected",
     "at": "2026-05-01T10:00:00.000000Z"}

`outcome` is one of connected / refused / failed ("refused": the helper itself
declined a destination it was not started for). Other `type`s are ignored, so a
helper may share the stream with its own messages. `report_line()` builds a line;
it is standard library only so a helper started with `python -I -S` can use a
copy of it.

Never recorded: URL paths, queries, headers, bodies, credentials. A line that does
not parse is still counted (host null, outcome "unreadable report") so that the
ledger never under-counts, but its text is dropped.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

EVENT_KIND = "network.egress"
OUTCOMES = ("connected", "refused", "failed")
UNREADABLE = "unreadable report"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.%]+\]|[0-9A-Za-z_.:-]{1,253})$")


def report_line(host: str, port: int, outcome: str = "connected", at: str | None = None) -> bytes:
    """The helper side: one report line (host and port only)."""
    when = at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {"type": "egress", "host": host, "port": int(port), "outcome": outcome, "at": when}
    return (json.dumps(body, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class Egress:
    host: str | None
    port: int | None
    outcome: str
    at: str | None

    def event_data(self, command: str, helper: str) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "outcome": self.outcome,
            "at": self.at,
            "command": command,
            "helper": helper,
        }


def parse(line: bytes | str) -> Egress | None:
    """One report line -> Egress; None for lines that are not egress reports."""
    try:
        obj = json.loads(line)
    except ValueError:
        return Egress(None, None, UNREADABLE, None)
    if not isinstance(obj, dict):
        return Egress(None, None, UNREADABLE, None)
    if obj.get("type") != "egress":
        return None
    host, port, outcome, at = obj.get("host"), obj.get("port"), obj.get("outcome"), obj.get("at")
    if (
        not isinstance(host, str)
        or not _HOST.match(host)
        or not isinstance(port, int)
        or isinstance(port, bool)
        or not 0 < port < 65536
        or outcome not in OUTCOMES
    ):
        return Egress(None, None, UNREADABLE, None)
    if not isinstance(at, str) or len(at) > 40:
        at = None
    return Egress(host.lower(), port, outcome, at)


class Ledger:
    """Reads one helper's report stream and appends its connections as they arrive.

    `open_store` is a callable returning a writable store (the CLI passes one bound
    to the user's paths); the reader thread opens its own connection. Typical use:

        ledger = Ledger(lambda: open_store(paths), command="krate push",
                        helper="registry-transport")
        proc = subprocess.Popen([...], stdout=subprocess.PIPE)
        ledger.follow(proc.stdout)        # background thread
        ...
        proc.wait(); recorded = ledger.finish()
    """

    def __init__(
        self,
        open_store: Callable[[], Any],
        *,
        command: str,
        helper: str,
        run_id: str | None = None,
        on_other: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._open_store = open_store
        self.command = command
        self.helper = helper
        self.run_id = run_id
        self.on_other = on_other
        self.recorded: list[Egress] = []
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def consume(self, stream: IO[bytes]) -> int:
        """Read `stream` to its end, recording every egress line; returns how many."""
        from krate.store import events

        n = 0
        with self._open_store() as store:
            for raw in stream:
                line = raw.strip()
                if not line:
                    continue
                egress = parse(line)
                if egress is None:
                    if self.on_other is not None:
                        with contextlib.suppress(ValueError):
                            self.on_other(json.loads(line))
                    continue
                events.append(
                    store, EVENT_KIND, egress.event_data(self.command, self.helper), self.run_id
                )
                self.recorded.append(egress)
                n += 1
        return n

    def follow(self, stream: IO[bytes]) -> None:
        """Consume `stream` in a background thread (the command keeps working meanwhile)."""

        def target() -> None:
            try:
                self.consume(stream)
            except BaseException as exc:  # reported by finish()
                self.error = exc

        self._thread = threading.Thread(target=target, name=f"ledger-{self.helper}", daemon=True)
        self._thread.start()

    def finish(self, timeout: float | None = 30.0) -> list[Egress]:
        """Wait for the stream to end (the helper exited); raise what the reader hit."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                from krate.errors import KrateError

                raise KrateError(
                    f"the {self.helper} helper kept its report stream open; "
                    "its egress may not be fully recorded"
                )
        if self.error is not None:
            raise self.error
        return list(self.recorded)
