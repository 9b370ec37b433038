"""krate's side of the registry transport: start it, hand it a job, record what it reports.

The transport (transport.py) is a separate, isolated, standard-library process: it
holds the only network code of login/push. This module starts it *before* krate
locks itself out of IP sockets (the CLI calls the lockdown right after `start()`),
then writes one job to its stdin (credentials travel only there), follows its
JSON-lines report (each connection becomes a `network.egress` event through
krate.netguard.ledger) and turns its last line into a result or one clear error.

It must never: import a networking module, put a credential in argv, the child's
environment, an event, an error message or a log line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krate import helper_process
from krate.errors import KrateError, UsageError
from krate.registry import early
from krate.registry.early import CHILD_ENV_NAMES, child_env  # noqa: F401 (used by callers)
from krate.registry.transport_hosts import is_loopback as loopback_host
from krate.registry.transport_hosts import split_host

if TYPE_CHECKING:
    from krate.registry.keychain import Credentials, Keychain
    from krate.store.connection import Store

TRANSPORT = Path(early.SCRIPT)
# Every file the transport runs: the script and the parts it loads by exact file.
# = transport.PARTS
TRANSPORT_PARTS = (
    "transport_hosts",
    "transport_http",
    "transport_auth",
    "transport_blobs",
    "transport_pull",
)
TRANSPORT_SHARED = ("hostport",)  # = transport.SHARED: krate modules it loads from above
TRANSPORT_FILES = (
    TRANSPORT,
    *(TRANSPORT.parent.parent / f"{m}.py" for m in TRANSPORT_SHARED),
    *(TRANSPORT.with_name(f"{p}.py") for p in TRANSPORT_PARTS),
)
HELPER = "registry-transport"

_HOST = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)
_REPO = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


# -- names ----------------------------------------------------------------------------------


def parse_registry(text: str) -> str:
    """`ghcr.io`, `registry.example.com:5000`, `127.0.0.1:5000`, `[::1]:5000` -> normalised.

    Read as docker and the distribution reference grammar read a registry: an IPv6
    address only in brackets (`::1:5000` is itself an address, so it is refused with a
    hint rather than taken for `[::1]:5000`).
    """
    value = text.strip().rstrip("/").lower()
    if "://" in value:
        scheme, _, rest = value.partition("://")
        raise UsageError(
            f"give the registry without a scheme: {rest!r} (krate uses HTTPS; "
            + ("add --plain-http for plain HTTP)" if scheme == "http" else "always)")
        )
    try:
        host, _port = split_host(value)
    except ValueError:
        host = ""
    if ":" in host and not value.startswith("["):
        raise UsageError(
            f"{text!r}: write an IPv6 registry address in brackets, e.g. [::1]:5000 or [{host}]"
        )
    ok = bool(host) and "/" not in value
    if ok and not _HOST.match(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            ok = False
    if not ok:
        raise UsageError(f"{text!r} is not a registry host name (e.g. ghcr.io or localhost:5000)")
    return value


def is_loopback(registry: str) -> bool:
    """Whether plain HTTP may be fallen back to: the transport's own check, on the host."""
    return loopback_host(split_host(registry)[0])


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


def parse_reference(text: str) -> Reference:
    """`registry/repository[:tag]` (tag `latest` when left out)."""
    value = text.strip()
    if "@" in value:
        raise UsageError(f"{text!r}: push to a tag (registry/repository:tag), not a digest")
    registry, slash, rest = value.partition("/")
    first = registry.lower()
    if not slash or not rest or not ("." in first or ":" in first or first == "localhost"):
        raise UsageError(
            f"{text!r} names no registry: write registry/repository:tag, e.g. ghcr.io/me/app:1.0"
        )
    registry = parse_registry(registry)
    repository, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        repository, tag = rest, "latest"
    if not _REPO.match(repository) or len(repository) > 255:
        raise UsageError(
            f"{repository!r} is not a valid repository name (lowercase letters, digits, "
            "and . _ - / between them)"
        )
    if not _TAG.match(tag):
        raise UsageError(f"{tag!r} is not a valid tag (letters, digits, _ . -; up to 128)")
    return Reference(registry, repository, tag)


@dataclass(frozen=True)
class Connection:
    """How to reach a registry: the scheme, whether a loopback registry may fall back to
    plain HTTP (announced when it happens), and what to tell the user up front."""

    scheme: str
    http_fallback: bool
    warning: str | None


def connection_for(registry: str, plain_http: bool) -> Connection:
    if plain_http:
        return Connection(
            "http",
            False,
            f"using plain HTTP for {registry} as asked (--plain-http): nothing is encrypted, "
            "credentials included",
        )
    return Connection("https", is_loopback(registry), None)


def used_plain_http(connection: Connection, messages: list[dict[str, Any]]) -> bool:
    """Whether the transport spoke plain HTTP: as asked, or by the announced loopback fallback."""
    return connection.scheme == "http" or any(
        m.get("type") == "notice" and m.get("plain_http") for m in messages
    )


PLAIN_HTTP_NOTICE = (
    "{registry} does not speak HTTPS; using plain HTTP because it is on this machine (loopback)"
)


# -- the helper process ----------------------------------------------------------------------


class TransportFailed(KrateError):
    """The transport reported an error (`code` is its stable word for it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Transport:
    """One started transport process, waiting for its job on stdin."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.messages: list[dict[str, Any]] = []
        self._done = False

    @classmethod
    def start(cls, *, python: str, env: Mapping[str, str]) -> Transport:
        """Start it now (before the lockdown): isolated interpreter, no site-packages."""
        try:
            proc = helper_process.spawn(python, TRANSPORT, env=env)
        except OSError as exc:
            raise KrateError(f"cannot start the registry transport: {exc.strerror or exc}") from exc
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def import_report(self, timeout: float = 60) -> dict[str, Any]:
        """Its sys.path and loaded module files (for the proof); it connects nowhere."""
        if self._done:
            raise RuntimeError("transport already used")
        self._done = True
        try:
            out, _err = self.proc.communicate(json.dumps({"op": "report"}).encode(), timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _err = self.proc.communicate()
        for raw in out.splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict) and line.get("type") == "done":
                    return line.get("python") or {}
        return {}

    def abandon(self) -> None:
        """End it without a job (nothing was sent; it exits on EOF)."""
        if self._done:
            return
        self._done = True
        helper_process.stop(self.proc, timeout=5)

    def run(
        self,
        job: dict[str, Any],
        *,
        open_store: Callable[[], Store],
        command: str,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        secrets: tuple[str, ...] = (),
        ask: Callable[[], Credentials | None] | None = None,
    ) -> dict[str, Any]:
        """Send the job, record egress while it works, return its `done` line or raise.

        With `ask`, the job goes without credentials (`"credentials": "ask"`) and stdin
        stays open: `ask()` (the keychain) runs only when the transport says the
        registry wants them, while it is already connected, and its answer is the next
        line. An error of `ask()` is raised once the transport has stopped.
        """
        from krate.netguard.ledger import Ledger

        if self._done:
            raise RuntimeError("transport already used")
        self._done = True
        lock = threading.Lock()
        secrets_seen = list(secrets)
        asked: list[BaseException] = []
        answered: list[bool] = []
        if ask is not None:
            job = {**job, "credentials": "ask", "username": None, "password": None}

        def answer() -> None:
            credentials = None
            try:
                credentials = ask()
            except BaseException as exc:  # the keychain's error, raised by the main thread
                asked.append(exc)
            line = {}
            if credentials is not None:
                line = {"username": credentials.username, "password": credentials.password}
                secrets_seen.extend(secret_forms(credentials.username, credentials.password))
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(json.dumps(line).encode() + b"\n")
                self.proc.stdin.close()
            del line, credentials

        def other(message: dict[str, Any]) -> None:
            if ask is not None and message.get("type") == "credentials" and not answered:
                answered.append(True)
                answer()
            with lock:
                self.messages.append(message)
            if on_message is not None:
                with contextlib.suppress(Exception):  # display trouble must not stop recording
                    on_message(message)

        ledger = Ledger(open_store, command=command, helper=HELPER, on_other=other)
        ledger.follow(self.proc.stdout)
        stderr_lines: list[bytes] = []
        errors = helper_process.LineReader(
            self.proc.stderr.fileno(),
            stderr_lines.append,
            name="registry-transport-stderr",
            on_torn=stderr_lines.append,
        ).start()
        try:
            try:
                self.proc.stdin.write(json.dumps(job).encode() + b"\n")
                if ask is None:
                    self.proc.stdin.close()
                else:
                    self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # it died early: its exit status and stderr say why
            del job
            code = self.proc.wait()
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()  # it never asked (an anonymous registry)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            ledger.finish(timeout=10)
            raise
        ledger.finish()
        helper_process.stop(self.proc, 10, errors)  # its pipes, once both readers ended
        if asked:
            raise asked[0]
        secrets = tuple(secrets_seen)
        with lock:
            messages = list(self.messages)
        final = messages[-1] if messages else {}
        if final.get("type") == "done" and code == 0:
            return final
        if final.get("type") == "error":
            raise TransportFailed(
                str(final.get("code", "error")), scrub(str(final.get("message", "")), secrets)
            )
        tail = b"\n".join(stderr_lines).decode("utf-8", "replace").strip().splitlines()
        last = scrub(tail[-1], secrets)[:200] if tail else "no message"
        raise TransportFailed(
            "crashed", f"the registry transport stopped unexpectedly (exit {code}: {last})"
        )


def secret_forms(username: str, password: str) -> tuple[str, ...]:
    """The password and its Basic form (base64 of user:password), which reveals it as well."""
    import base64

    return (password, base64.b64encode(f"{username}:{password}".encode()).decode())


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Defence in depth: a secret never reaches a message, even if a registry echoed it."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# -- login -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    registry: str
    username: str
    auth: str
    keychain: str
    plain_http: bool


def login(
    transport: Transport,
    *,
    open_store: Callable[[], Store],
    keychain: Keychain,
    registry: str,
    username: str,
    password: str,
    plain_http: bool = False,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> LoginResult:
    """Check the credentials against the registry; only when they work, keep them.

    The keychain entry and the `credential.stored` event (names only) are written
    only after the registry accepted the credentials.
    """
    from krate.registry.keychain import SERVICE, Credentials
    from krate.store import events

    connection = connection_for(registry, plain_http)
    job = {
        "op": "login",
        "registry": registry,
        "scheme": connection.scheme,
        "http_fallback": connection.http_fallback,
        "username": username,
        "password": password,
    }
    done = transport.run(
        job,
        open_store=open_store,
        command="krate login",
        on_message=on_message,
        secrets=secret_forms(username, password),
    )
    used_http = used_plain_http(connection, transport.messages)
    keychain.put(registry, Credentials(username, password))
    with open_store() as store:
        events.append(
            store,
            "credential.stored",
            {
                "registry": registry,
                "user": username,
                "account": registry,
                "service": SERVICE,
                "keychain": keychain.name,
                "auth": done.get("auth"),
            },
        )
    return LoginResult(registry, username, str(done.get("auth")), keychain.label, used_http)


def logout(*, open_store: Callable[[], Store], keychain: Keychain, registry: str) -> bool:
    """Remove the registry's keychain entry; records `credential.removed` when there was one."""
    from krate.registry.keychain import SERVICE
    from krate.store import events

    removed = keychain.delete(registry)
    if removed:
        with open_store() as store:
            events.append(
                store,
                "credential.removed",
                {
                    "registry": registry,
                    "account": registry,
                    "service": SERVICE,
                    "keychain": keychain.name,
                },
            )
    return removed
