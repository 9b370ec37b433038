"""The in-process guard: a PEP 578 audit hook that names Python code trying the network.

It refuses, in krate's own process, name resolution (`getaddrinfo`,
`gethostbyname`, ...), IP socket creation, connect/bind/sendto/sendmsg on IP
sockets and the standard library's network clients, and remembers the file and
line that tried. The CLI boundary then records a `guard.violation` event and
exits 1. Unix sockets (D-Bus for the keyring) stay allowed.

It is attribution, not enforcement: ctypes, C extensions and child processes do
not raise audit events, and determined code can disable the hook. The kernel
lockdown (lockdown.py) is what enforces; this says *who*. The hook must stay
cheap (it sees every audit event of the process: opens, imports, compiles) and
must never import a networking module.
"""

from __future__ import annotations

import os
import sys
from _thread import allocate_lock

TYPE_CHECKING = False  # not `from typing import ...`: typing costs milliseconds to import
if TYPE_CHECKING:
    from typing import Any

    from krate.store.connection import Store

EVENT_KIND = "guard.violation"

if sys.platform == "darwin":
    _INET_FAMILIES = frozenset({2, 30})  # AF_INET, AF_INET6
else:
    _INET_FAMILIES = frozenset({2, 10, 17})  # AF_INET, AF_INET6, AF_PACKET

# Events whose arguments are (self, host, port): a client connecting to a server.
_TO_HOST_PORT = frozenset(
    {
        "http.client.connect",
        "ftplib.connect",
        "smtplib.connect",
        "poplib.connect",
        "imaplib.open",
        "nntplib.connect",
        "telnetlib.Telnet.open",
    }
)
# Refused whatever the arguments: they only exist to reach another machine.
_ALWAYS = _TO_HOST_PORT | {
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.getnameinfo",
    "http.client.send",
    "urllib.Request",
    "webbrowser.open",
}
# Refused when the socket is an IP (or packet) socket.
_ON_SOCKET = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
_WATCHED = _ALWAYS | _ON_SOCKET | {"socket.__new__"}

_STDLIB = os.path.dirname(os.__file__)


class NetworkRefused(PermissionError):
    """Raised into the code that tried; it looks like the kernel's EACCES to that code."""


class Violation:
    """One refused attempt: what, to where, and the innermost non-stdlib frame that tried.

    A plain class, not a dataclass: this module loads before everything else and
    its import must stay well under a millisecond.
    """

    __slots__ = ("event", "target", "file", "line", "function", "stack")

    def __init__(
        self, event: str, target: str | None, file: str, line: int, function: str, stack: list[str]
    ) -> None:
        self.event, self.target, self.file, self.line = event, target, file, line
        self.function, self.stack = function, stack

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def describe(self) -> str:
        what = self.event + (f" to {self.target}" if self.target else "")
        return f"{what}, attempted by {self.file}:{self.line} ({self.function})"


_state = {"installed": False, "record": True, "sealed": False}
_violations: list[Violation] = []
_lock = allocate_lock()


def install(*, record: bool = True) -> None:
    """Add the audit hook (once per process; it cannot be removed).

    `record=False` (tab completion) still refuses and reports, but never asks the
    CLI to open the database.
    """
    _state["record"] = _state["record"] and record
    if _state["installed"]:
        return
    _state["installed"] = True
    sys.addaudithook(_hook)


def seal() -> None:
    """The CLI boundary has settled for the last time: a later refusal exits 1 at once."""
    _state["sealed"] = True


def installed() -> bool:
    return _state["installed"]


def should_record() -> bool:
    return _state["record"]


def violations() -> list[Violation]:
    with _lock:
        return list(_violations)


def take_violations() -> list[Violation]:
    """Hand over the violations not yet recorded (the CLI boundary records them)."""
    with _lock:
        taken = list(_violations)
        _violations.clear()
        return taken


def _hook(event: str, args: tuple) -> None:
    if event not in _WATCHED:
        return
    if event == "socket.__new__":
        if args[1] not in _INET_FAMILIES:
            return
        target = None
    elif event in _ON_SOCKET:
        if getattr(args[0], "family", None) not in _INET_FAMILIES:
            return
        target = _address(args[1])
    else:
        target = _target(event, args)
    violation = _attribute(event, target)
    with _lock:
        _violations.append(violation)
    try:
        sys.stderr.write(
            f"krate: refused network access: {violation.describe()}. krate makes no network "
            f"connections of its own; this is recorded as {EVENT_KIND}.\n"
        )
        sys.stderr.flush()
    except Exception:
        pass
    if _state["sealed"]:
        os._exit(1)  # nothing is left to report it to: the process is exiting
    raise NetworkRefused(13, f"krate refused network access ({event}); see `krate audit network`")


def _address(address: object) -> str | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{_host(address[0])}:{address[1]}"
    return None


def _host(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value)[:253]


def _target(event: str, args: tuple) -> str | None:
    """Host and port only: never a URL path, query or request body."""
    try:
        if event in ("socket.getaddrinfo",):
            host, port = args[0], args[1]
            return _host(host) + (f":{port}" if port not in (None, 0, "") else "")
        if event in ("socket.gethostbyname", "socket.gethostbyaddr"):
            return _host(args[0])
        if event == "socket.getnameinfo":
            return _address(args[0])
        if event in _TO_HOST_PORT:
            return f"{_host(args[1])}:{args[2]}"
        if event == "urllib.Request":
            from urllib.parse import urlsplit

            parts = urlsplit(str(args[0]))
            return (
                parts.hostname + (f":{parts.port}" if parts.port else "")
                if parts.hostname
                else None
            )
    except Exception:
        return None
    return None


def _attribute(event: str, target: str | None) -> Violation:
    """The innermost frame outside the standard library: who tried (frame 2 is the caller)."""
    first = frame = sys._getframe(2)
    stack: list[str] = []
    culprit = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if len(stack) < 8:
            stack.append(f"{filename}:{frame.f_lineno} {frame.f_code.co_name}")
        if culprit is None and not _is_stdlib(filename):
            culprit = frame
        frame = frame.f_back
    chosen = culprit or first
    return Violation(
        event=event,
        target=target,
        file=chosen.f_code.co_filename,
        line=chosen.f_lineno,
        function=chosen.f_code.co_name,
        stack=stack,
    )


def _is_stdlib(filename: str) -> bool:
    if filename.startswith("<frozen"):
        return True
    return (
        filename.startswith(_STDLIB)
        and "site-packages" not in filename
        and "dist-packages" not in filename
    )


def record(store: Store, found: list[Violation], command: str) -> None:
    """Append one `guard.violation` event per refused attempt (called by the CLI boundary)."""
    with store.write() as writer:
        for violation in found:
            writer.append(EVENT_KIND, {**violation.to_dict(), "command": command})
