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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from krate.helper_process import LineReader

if TYPE_CHECKING:
    from krate.store.connection import Store

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
    to the user's paths); the reader thread (helper_process.LineReader) opens its own
    connection at the first report. A torn last line (the helper died mid-line) is
    recorded too: as an unreadable report, unless it is a whole one. Typical use:

        ledger = Ledger(lambda: open_store(paths), command="krate push",
                        helper="registry-transport")
        proc = subprocess.Popen([...], stdout=subprocess.PIPE)
        ledger.follow(proc.stdout)        # background thread
        ...
        proc.wait(); recorded = ledger.finish()
    """

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        command: str,
        helper: str,
        run_id: str | None = None,
        on_other: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._open_store, self.command, self.helper = open_store, command, helper
        self.run_id, self.on_other = run_id, on_other
        self.recorded: list[Egress] = []
        self._store: Store | None = None
        self._reader: LineReader | None = None

    @property
    def error(self) -> BaseException | None:
        return None if self._reader is None else self._reader.error

    def follow(self, stream: IO[bytes]) -> None:
        """Record `stream`'s reports in a background thread (the command keeps working)."""
        self._reader = LineReader(
            stream.fileno(),
            self._line,
            name=f"ledger-{self.helper}",
            on_torn=self._line,
            on_end=self._close,
        ).start()

    def _line(self, raw: bytes) -> None:
        line = raw.strip()
        if not line:
            return
        egress = parse(line)
        if egress is None:
            if self.on_other is not None:
                with contextlib.suppress(ValueError):
                    self.on_other(json.loads(line))
            return
        from krate.store import events

        if self._store is None:
            self._store = self._open_store()
        events.append(
            self._store, EVENT_KIND, egress.event_data(self.command, self.helper), self.run_id
        )
        self.recorded.append(egress)

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def finish(self, timeout: float | None = 30.0) -> list[Egress]:
        """Wait for the stream to end (the helper exited); raise what the reader hit."""
        if self._reader is not None and not self._reader.join(timeout):
            from krate.errors import KrateError

            raise KrateError(
                f"the {self.helper} helper kept its report stream open; "
                "its egress may not be fully recorded"
            )
        if self.error is not None:
            raise self.error
        return list(self.recorded)
