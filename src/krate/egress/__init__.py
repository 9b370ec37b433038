"""Egress for one run: start the proxy helper, wire the sandbox to it, record its decisions.

The run domain makes one call, `for_run(policy, run_id, paths, capabilities)`,
before it starts the sandbox (and before krate locks itself out of the network),
and gets an `EgressSession` (or None when the policy allows no network at all).
Egress contributes a spec change and a gate, nothing else:

    session.apply(spec)   the spec wired to the proxy: bridge first, proxy env, socket mount
                          (behind the bridge also its DNS: resolver files, etc.py; the
                          gate's `before_go` opens the low ports, netns.py)
    session.gate          what holds the workload until the run is recorded (the bridge), or None
    session.release(go)   the gate: let the held workload start, or make the bridge exit
    session.unstarted(s)  after the sandbox exited: why the bridge never started the workload
    session.stop()        once the sandbox exited: the proxy told to stop, not waited for
    session.close()       stop the proxy, record every decision, return counts
    session.check()       KrateError when the proxy never came up although the workload ran

The backend's capabilities say how the workload reaches the proxy: through the
bridge and its unix socket (`VIA_BRIDGE`), on a loopback TCP port (`VIA_LOOPBACK`), or
through the hypervisor's port forward to the unix socket (`VIA_GUESTFWD`, a micro-VM: its
proxy variables name the guest-side address, GUEST_PROXY).

This module never opens a socket itself: only the proxy process does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.helper_process import wait
from krate.paths import Paths
from krate.records import NamedTuple
from krate.runs_read import summarize_hosts  # `runs show` reads it without this package
from krate.sandbox.backend import BRIDGE as VIA_BRIDGE
from krate.sandbox.backend import GUESTFWD as VIA_GUESTFWD
from krate.sandbox.backend import LOOPBACK as VIA_LOOPBACK
from krate.sandbox.backend import Capabilities

from . import helperlib, scratch
from .gate import BridgeGate
from .recorder import Recorder, journal_path, open_journal, reconcile, recover
from .spawn import (
    BRIDGE,
    BRIDGE_DNS,
    PROXY,
    fresh_bytecode,
    proxy_script,
    send_config,
    start_proxy,
)

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import IO, Any

    from krate.policy.decide import EffectivePolicy
    from krate.sandbox.spec import SandboxSpec

__all__ = [
    "BRIDGE",
    "PROXY",
    "EgressSession",
    "Limits",
    "compile_rules",
    "for_run",
    "proxy_script",
    "recover",
    "spawn_early",
    "start_for_run",
    "summarize_hosts",
]

SOCKET_NAME = "proxy.sock"
BRIDGE_PYC = "bridge.pyc"  # the bridge's bytecode, copied instead of bridge.py when fresh
DIR_PREFIX = "krate-egress-"
HTTP_PORT, SOCKS_PORT = 3128, 1080
READY_TIMEOUT_S = 15.0
LOOPBACK = ("localhost", "127.0.0.1", "::1")
GUEST_PROXY = "10.0.2.100"  # sandbox/qemu.py: where a micro-VM's guestfwd rules listen
PROXY_USER = "krate"  # parsers.USER (not imported here: the run path does not load parsers)


class Limits(NamedTuple):
    max_connections: int = 256
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    header_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    threads: bool = True  # each relay direction a blocking thread; False: a coroutine (relay.py)


DEFAULT_LIMITS = Limits()


class Summary(NamedTuple):
    """What `close()` reports for the run record."""

    connections: int
    allowed: int
    denied: int

    def to_dict(self) -> dict[str, int]:
        return self._asdict()


def compile_rules(policy: EffectivePolicy) -> list[dict[str, Any]]:
    """The policy's network rules as plain data the proxy rebuilds them from."""
    return [
        {
            "kind": r.pattern.kind,
            "host": r.pattern.host,
            "ports": None if r.pattern.ports is None else sorted(r.pattern.ports),
            "is_ip": r.pattern.is_ip,
            "rule": r.rule,
            "layer": r.layer,
        }
        for r in policy.net_rules
    ]


def compile_private(policy: EffectivePolicy) -> list[dict[str, Any]]:
    """`network.private_ok` as plain data: allowed names that may resolve privately."""
    return [
        {"kind": r.pattern.kind, "host": r.pattern.host, "rule": r.rule, "layer": r.layer}
        for r in getattr(policy, "private_rules", ())
    ]


def loopback_forwards(rules: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Host-loopback ports the policy names with a port (`localhost:5432`): (host, port)."""
    seen: list[tuple[str, int]] = []
    for r in rules:
        if r["kind"] != "exact" or r["host"] not in LOOPBACK or r["ports"] is None:
            continue
        for port in r["ports"]:
            if (r["host"], port) not in seen:
                seen.append((r["host"], port))
    return seen


class EgressSession:
    """One run's proxy: its process, socket folder, recorder and, once closed, its summary."""

    tcp_port: int | None = None  # VIA_LOOPBACK: the proxy's port
    # VIA_LOOPBACK: the run's proxy credential, in the proxy URLs the workload gets
    # (`http://krate:SECRET@127.0.0.1:PORT`); any local process reaches the port, only
    # this run knows the secret. Held in memory only: never recorded.
    secret: str | None = None
    # VIA_LOOPBACK: host-loopback ports the policy names (`127.0.0.1:5432`); without a
    # bridge to forward them the workload connects to them directly (SandboxSpec.loopback_ports)
    direct_ports: tuple[int, ...] = ()
    summary: Summary | None = None
    start_errors: str = ""
    stopped_early: bool = False  # closed before the proxy was up: nothing can have used it
    pending: dict[str, Any] | None = None  # the configuration still to send (configure())

    def __init__(
        self,
        *,
        run_id: str,
        paths: Paths,
        folder: Path,
        process: subprocess.Popen,
        recorder: Recorder,
        journal_fd: int,
        python: str,
        forwards: list[tuple[str, int]] | None = None,
        http_port: int = HTTP_PORT,
        socks_port: int = SOCKS_PORT,
        stderr: IO[bytes] | None = None,  # the proxy's errors, read only if it fails to start
        network: str = VIA_BRIDGE,
    ) -> None:
        self.run_id, self.paths, self.folder = run_id, paths, folder
        self.process, self.recorder, self.journal_fd = process, recorder, journal_fd
        self.python, self.forwards = python, forwards or []
        self.http_port, self.socks_port, self.stderr = http_port, socks_port, stderr
        self.network = network
        self.bridge: BridgeGate | None = None  # the hold, once made (see hold())
        # Behind the bridge it answers DNS for clients that ignore the proxy variables
        # (bridge_dns.py); it needs the hold, whose `before_go` opens the low ports.
        self.dns = network == VIA_BRIDGE and (folder / "bridge_dns.py").exists()

    def hold(self) -> int:
        """Make the bridge wait for `release()` before it starts the workload (gate.py).

        The sandbox and the bridge then start while krate records the run's start:
        their start-up leaves the run's critical path, and the workload still never
        runs unrecorded. Returns the descriptor the sandbox must inherit (the
        launcher closes krate's copy once the sandbox started).
        """
        if self.network != VIA_BRIDGE:
            raise ValueError("only the bridge can hold the workload")
        if self.bridge is None:
            self.bridge = BridgeGate()
            if self.dns:
                from .netns import open_low_ports

                self.bridge.before_go = open_low_ports
        return self.bridge.go_read

    def held_fds(self) -> tuple[int, ...]:
        """What the sandbox inherits for the hold: the go pipe's and the ack pipe's ends."""
        return () if self.bridge is None else self.bridge.fds()

    def release(self, go: bool = True) -> None:
        if self.bridge is not None:
            self.bridge.release(go)

    def unstarted(self, status: int) -> tuple[int, str] | None:
        return None if self.bridge is None else self.bridge.unstarted(status)

    @property
    def socket_path(self) -> Path:
        return self.folder / SOCKET_NAME

    def bind_args(self) -> list[str]:
        """bwrap arguments: the folder with the socket and the bridge, read-only, same path.

        Put them after any `--tmpfs /tmp` so the mount is not hidden.
        """
        if self.network != VIA_BRIDGE:
            return []
        return ["--ro-bind", str(self.folder), str(self.folder)]

    def env(self) -> dict[str, str]:
        """Proxy variables for the workload, both cases; NO_PROXY emptied so nothing bypasses."""
        loopback = self.network == VIA_LOOPBACK and self.tcp_port is not None
        port = self.tcp_port if loopback else self.http_port
        socks = self.tcp_port if loopback else self.socks_port
        values = {
            "HTTP_PROXY": self.proxy_url("http", port),
            "HTTPS_PROXY": self.proxy_url("http", port),
            "ALL_PROXY": self.proxy_url("socks5h", socks),
            "NO_PROXY": "",
        }
        out = {}
        for name, value in values.items():
            out[name] = value
            out[name.lower()] = value
        if self.secret:
            # git's default (`anyauth`) first asks without the credential: each such try
            # would be refused and recorded as another process's. Basic sends it at once.
            out["GIT_HTTP_PROXY_AUTHMETHOD"] = "basic"
        return out

    def proxy_url(self, scheme: str = "http", port: int | None = None) -> str:
        """The proxy's URL for the workload, with the run's credential when it has one."""
        port = port or self.tcp_port or self.http_port
        auth = f"{PROXY_USER}:{self.secret}@" if self.secret else ""
        host = GUEST_PROXY if self.network == VIA_GUESTFWD else "127.0.0.1"
        return f"{scheme}://{auth}{host}:{port}"

    def wrap_argv(self, argv: list[str]) -> list[str]:
        """The sandbox's command: the bridge, which starts its listeners and then runs argv."""
        if self.network != VIA_BRIDGE:
            return list(argv)
        forwards = [a for host, port in self.forwards for a in ("--forward", f"{host}:{port}")]
        if self.bridge is not None:
            forwards += self.bridge.bridge_args()
            if self.dns:
                forwards += ["--dns", str(self.folder / "bridge_dns.py")]
        return [
            self.python,
            "-I",
            "-S",
            str(self.folder / (BRIDGE_PYC if (self.folder / BRIDGE_PYC).exists() else "bridge.py")),
            "--socket",
            str(self.socket_path),
            "--http",
            str(self.http_port),
            "--socks",
            str(self.socks_port),
            *forwards,
            "--",
            *argv,
        ]

    @property
    def gate(self) -> BridgeGate | None:
        """The bridge's hold while it holds the workload until `release()`, else None."""
        return self.bridge if self.bridge is not None and self.bridge.holding else None

    def apply(self, spec: SandboxSpec) -> SandboxSpec:
        """The sandbox spec with this session wired in: bridge first, proxy env, socket mount.

        Behind the bridge the workload is held (`gate`): the sandbox may start while
        krate records the run, and the workload runs only once released. On a loopback
        port the policy's loopback ports become the spec's `loopback_ports`.
        """
        from krate.sandbox.spec import Bind

        binds: tuple[Bind, ...] = ()
        if self.network == VIA_BRIDGE:
            self.hold()
            binds = (Bind(self.folder, self.folder),)
            if self.dns:
                from .etc import binds as resolver_files

                binds += resolver_files()
        elif self.network == VIA_GUESTFWD:  # the socket the hypervisor's forward reaches
            binds = (Bind(self.socket_path, self.socket_path),)
        return spec._replace(
            argv=tuple(self.wrap_argv(list(spec.argv))),
            env={**spec.env, **self.env()},
            extra_binds=tuple(spec.extra_binds) + binds,
            pass_fds=(*spec.pass_fds, *self.held_fds()),
            network="proxy",
            loopback_ports=tuple(sorted({*spec.loopback_ports, *self.direct_ports})),
        )

    def configure(self, run_as: int | None = None) -> None:
        """Send the proxy its configuration (once): the bridge's folder made ready for the
        sandbox's user, the run's secret on a loopback port. On a loopback port the
        workload needs the proxy's port first: this waits for it.

        `run_as`: the uid the sandbox runs as when krate runs as root (start_for_run)."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        os.chmod(self.folder, 0o700 if run_as is None else 0o711)
        loopback = self.network == VIA_LOOPBACK
        for source in (BRIDGE,) if loopback else (BRIDGE, BRIDGE_DNS):
            name = source.name
            if source == BRIDGE and self.python == os.path.realpath(sys.executable):
                # Its bytecode when fresh: the bridge starts on the run's critical path,
                # and Python compiles a script it is given as source (~2.5 ms) every time.
                cached = fresh_bytecode(BRIDGE)
                source, name = (cached, BRIDGE_PYC) if cached is not None else (source, name)
            scratch.copy(source, self.folder / name, 0o600 if run_as is None else 0o644)
        self.dns = self.network == VIA_BRIDGE and (self.folder / "bridge_dns.py").exists()
        # The loopback port is reachable by every local process: only clients that give
        # this run's secret are served. The bridge's socket is reachable from this run's
        # sandbox only. 256 bits, hex (URL-safe as it is): what secrets.token_hex(32)
        # returns, without the import (secrets loads random, hmac and base64: about 1 ms).
        secret = os.urandom(32).hex() if loopback else None
        config = {
            **pending,
            "listen": "tcp:127.0.0.1:0" if loopback else f"unix:{self.socket_path}",
            "journal_fd": self.journal_fd,
            "socket_uid": run_as,
            "given": helperlib.given(),  # its only non-standard modules (see helperlib.py)
            "secret": secret,  # on stdin with the rest: never in argv or the environment
        }
        send_config(self.process, config)
        # Behind the bridge the socket's path is known in advance and the bridge waits for
        # it, so the sandbox starts while the proxy does; `check()` reports a proxy that
        # never came up. On a loopback port the workload needs the proxy's port first.
        self.secret = secret
        if loopback:
            rules = pending["rules"]
            self.direct_ports = tuple(sorted({p for _h, p in loopback_forwards(rules)}))
            self.require_ready()
            self.tcp_port = int(self.recorder.ready_line["port"])

    def check(self) -> None:
        """After close(): the workload ran, but its allowed network never existed."""
        if self.recorder.ready_line is None and not self.stopped_early:
            raise self.failure()

    def require_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait for the proxy's ready line; KrateError (naming its own error) if none came."""
        if self.recorder.ready.wait(timeout) and self.recorder.ready_line is not None:
            return
        self.close(timeout=2)
        raise self.failure()

    def failure(self) -> KrateError:
        """Why the proxy never came up, from its own error output."""
        detail = self.start_errors.strip().splitlines()
        return KrateError(
            "the egress proxy did not start"
            + (f": {detail[-1]}" if detail else "")
            + "; run with KRATE_DEBUG=1 or report a bug",
            exit_code=EXIT_KRATE_FAILED,
        )

    def stop(self) -> None:
        """Tell the proxy to stop (the end of its stdin), without waiting: once the sandbox
        has exited no client is left to come, and the proxy's shutdown then overlaps what
        the run does before `close()`, which waits for it and records everything."""
        if self.summary is None and self.recorder.ready_line is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def close(self, timeout: float = 10.0) -> Summary:
        """Stop the proxy (open connections get a short grace), record everything, clean up."""
        if self.summary is not None:
            return self.summary
        if self.bridge is not None:
            self.bridge.close()  # a bridge still waiting exits without the workload
        if self.recorder.ready_line is None and self.process.poll() is None:
            # The sandbox is gone and the proxy never listened: no connection went through
            # it, so there is nothing to wait for (a quick `krate run -- true`).
            self.stopped_early = True
            self.process.kill()
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            wait(self.process, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.recorder.join(timeout)
        with contextlib.suppress(OSError):
            self.process.stdout.close()
        # Anything the stream did not deliver (or the recorder could not write) is in the
        # journal: record the difference, then remove the journal.
        from krate.store import open_store

        late = reconcile(
            lambda: open_store(self.paths),
            self.run_id,
            journal_path(self.paths, self.run_id),
            self.recorder.recorded,
            self.recorder.coalescer,
        )
        os.close(self.journal_fd)
        scratch.remove(self.folder)
        if self.stderr is not None:
            if self.recorder.ready_line is None:
                self.stderr.seek(0)
                self.start_errors = self.stderr.read().decode(errors="replace")
            self.stderr.close()
        counts = self.recorder.counts
        closed = self.recorder.closed_line or {}
        total = closed.get("connections", counts["allow"] + counts["deny"] + late)
        self.summary = Summary(total, counts["allow"], total - counts["allow"])
        return self.summary


def for_run(
    policy: EffectivePolicy,
    run_id: str,
    paths: Paths,
    capabilities: Capabilities,
    *,
    run_as: int | None = None,
) -> EgressSession | None:
    """The run domain's one call: decisions a killed run left behind recorded, then this
    run's proxy started (None when the policy allows no network at all).

    The proxy starts before the sandbox (and before krate locks itself out of the
    network); the backend's capabilities say how the workload reaches it.
    """
    session = spawn_early(policy, run_id, paths, capabilities)
    if session is not None:
        try:
            session.configure(run_as)
        except BaseException:
            session.close(timeout=2)
            raise
    return session


def spawn_early(
    policy: EffectivePolicy, run_id: str, paths: Paths, capabilities: Capabilities
) -> EgressSession | None:
    """`for_run` without the configuration: the run starts its proxy before it prepares
    the sandbox (the proxy's start-up then overlaps that work, and a first connection
    does not wait for it), and calls `configure(run_as)` once it knows the sandbox's user."""
    recover(paths)
    limits = DEFAULT_LIMITS._replace(threads=capabilities.relay_threads)
    return spawn_for_run(policy, run_id, paths, network=capabilities.network, limits=limits)


def clean_stale(tmp: str | None = None) -> None:
    """Remove socket folders left by a krate that was killed with its proxy."""
    if tmp is None:
        import tempfile

        tmp = tempfile.gettempdir()
    try:  # a listing, not Path.glob: every networked run does this (/tmp may be long)
        with os.scandir(tmp) as listing:
            names = [e.name for e in listing if e.name.startswith(DIR_PREFIX)]
    except OSError:
        return
    for name in names:
        folder = Path(tmp, name)
        try:
            pid = int(folder.name[len(DIR_PREFIX) :].split("-")[0])
            if folder.stat().st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            import shutil  # rarely: only after a krate was killed with its proxy

            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, OSError):
            continue


def start_for_run(
    policy: EffectivePolicy,
    run_id: str,
    paths: Paths,
    *,
    python: str | None = None,
    network: str = VIA_BRIDGE,
    limits: Limits = DEFAULT_LIMITS,
    run_as: int | None = None,
) -> EgressSession | None:
    """Start the egress proxy for a run; None when the policy allows no network at all.

    `run_as`: the uid the sandbox runs as when krate runs as root. The socket folder
    stays root's but that user may pass through it (0711) and read the bridge (0644);
    the proxy hands its socket to that uid alone.
    """
    session = spawn_for_run(policy, run_id, paths, python=python, network=network, limits=limits)
    if session is not None:
        try:
            session.configure(run_as)
        except BaseException:
            session.close(timeout=2)
            raise
    return session


def spawn_for_run(
    policy: EffectivePolicy,
    run_id: str,
    paths: Paths,
    *,
    python: str | None = None,
    network: str = VIA_BRIDGE,
    limits: Limits = DEFAULT_LIMITS,
) -> EgressSession | None:
    """The proxy's process started, before the run is prepared: it imports its parts while
    krate prepares the run, and `EgressSession.configure` then sends its configuration.
    None when the policy allows no network at all."""
    rules = compile_rules(policy)
    if not rules:
        return None
    python = python or os.path.realpath(sys.executable)
    folder = scratch.make_folder(f"{DIR_PREFIX}{os.getpid()}-")
    clean_stale(str(folder.parent))  # where this run's folder went (tempfile's choice)
    loopback = network == VIA_LOOPBACK
    forwards = [] if loopback else loopback_forwards(rules)
    ports = {port for _host, port in forwards}
    http_port = next(p for p in range(HTTP_PORT, 65536) if p not in ports)
    socks_port = next(p for p in range(SOCKS_PORT, 65536) if p not in ports | {http_port})
    journal_fd = open_journal(paths, run_id)
    process, stderr = start_proxy(python, journal_fd, helperlib.given(), folder)
    try:
        recorder = Recorder(paths, run_id, process.stdout.fileno())
        recorder.start()
    except BaseException:
        stderr.close()
        raise
    session = EgressSession(
        run_id=run_id, paths=paths, folder=folder, process=process, recorder=recorder,
        journal_fd=journal_fd, python=python, forwards=forwards, http_port=http_port,
        socks_port=socks_port, stderr=stderr, network=network,
    )  # fmt: skip
    session.pending = {
        "rules": rules,
        "net_default": list(policy.net_default),
        "private_ok": compile_private(policy),
        **limits._asdict(),
    }
    return session
