"""The in-sandbox bridge: the workload's only way to the egress proxy.

Why it exists: on Linux the sandbox has its own empty network namespace. This
program runs as the sandbox's first process (`python -I -S bridge.py ... -- CMD`),
listens on the sandbox's loopback (the HTTP proxy port, the SOCKS port, and each
allowed host-loopback port such as `localhost:5432`, at the same address), and
hands every connection it accepts to the proxy outside, over the bind-mounted
Unix socket (SCM_RIGHTS): the proxy decides, records and relays it, so bytes
are copied once. Then it runs CMD, passes signals on, and exits with CMD's
status (128+N when CMD was killed by signal N).

krate must know whether CMD ran, not guess it from the bridge's status (a bridge
that dies exits 1, like many workloads): once `posix_spawnp` returned, the bridge
writes `started` on the `--ack` descriptor; if it stops before that it writes one
line `krate-bridge: <reason>` there instead (not on stderr, which is the
workload's), and krate records the run as failed with that reason (125, or
126/127 when CMD could not be executed).
When stdin is the controlling terminal of the sandbox's session (krate kept the
terminal, sandbox/supervise.py), CMD stays in the bridge's process group, the
terminal's foreground group, and gets Ctrl-C, Ctrl-\\ and SIGWINCH from the kernel:
the bridge then passes on only the other signals. Otherwise CMD gets its own group.

It stands between krate and every workload that may use the network, so it
starts the workload as soon as its listeners exist: it uses the C modules
`_socket`, `_thread` and `_signal` and `posix.posix_spawnp`, because their
public wrappers (socket, threading, signal, subprocess) build enums and
helpers at import that would add about 20 ms to every such run. Even `os`
(stat, posixpath, _collections_abc: ~1.5 ms) is `posix`, its C part, and no
`from __future__` import (~0.1 ms): its annotations are valid at run time. It decides
nothing and records nothing: a forwarded loopback port is handed over as
`F host:port`, decided like any other. It must never connect anywhere but the
proxy's socket.

With `--dns FILE` (the backend lets it bind port 53: krate set the sandbox's
`ip_unprivileged_port_start` from outside before the go-ahead) it also answers
DNS on 127.0.0.1:53 and 127.0.0.53:53 for clients that ignore the proxy
variables: the sockets are bound before the workload starts, so the workload
can never take them, and FILE (bridge_dns.py) is loaded in a thread afterwards.
"""

import _signal
import _socket
import _thread
import posix as os  # os's C part: `os` itself imports stat, posixpath and _collections_abc
import sys
import time

HANDOFF = b"\x00"  # see proxy.py: a hand-over, not a client speaking HTTP or SOCKS5
PROXY_WAIT_S = 10.0
GO = b"1"  # krate's go-ahead on the --go descriptor
STARTED = "started"  # on the --ack descriptor: CMD was executed
ACK: list[int] = []  # the --ack descriptor, once parsed
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
FROM_TERMINAL = ("SIGINT", "SIGQUIT", "SIGWINCH")  # the kernel sends them to the whole group
# Python ignores these at start-up; the workload gets the default back (as subprocess does).
RESTORED_SIGNALS = ("SIGPIPE", "SIGXFSZ")
STREAM = _socket.SOCK_STREAM


def has_terminal() -> bool:
    """Whether stdin is this session's controlling terminal (krate kept the terminal)."""
    try:
        os.tcgetpgrp(0)
    except OSError:
        return False
    return True


def dial(path: str, wait: float = PROXY_WAIT_S):
    """Connect to the proxy's socket, waiting while it starts (krate does not hold the
    workload back until the proxy is up: that would add its start-up to every run)."""
    deadline = time.monotonic() + wait
    while True:
        upstream = _socket.socket(_socket.AF_UNIX, STREAM)
        try:
            upstream.connect(path)
            return upstream
        except (FileNotFoundError, ConnectionRefusedError):
            upstream.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.001)


def serve(listener, path: str, target: str | None) -> None:
    """Accept and hand over, one client after the other: a hand-over is a connect and a
    send on a Unix socket, shorter than starting a thread for it (the clients meanwhile
    wait in the listen backlog, as they would for the proxy)."""
    while True:
        try:
            fd, _address = listener._accept()
        except OSError:
            return
        client = _socket.socket(listener.family, STREAM, 0, fd)
        hand_over(client, path, target)


def hand_over(client, path: str, target: str | None, kind: str = "F") -> None:
    """Pass the accepted client socket itself to the proxy, which serves it from there on.

    `P`: the client speaks HTTP or SOCKS5 to the proxy. `F host:port`: a forwarded
    loopback port, whose client speaks to `target` directly. `T name:port`: the
    same for a name the bridge's DNS answered (bridge_dns.py).
    """
    head = HANDOFF + (b"P\n" if target is None else f"{kind} {target}\n".encode())
    try:
        upstream = dial(path)
    except OSError:
        client.close()
        return
    try:
        fd = client.fileno().to_bytes(4, sys.byteorder, signed=True)
        upstream.sendmsg([head], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd)])
    except OSError:
        pass
    upstream.close()
    client.close()


def ask(path: str, name: str) -> str:
    """The proxy's word on a name the workload looked up: `A PORTS`, `N` (denied) or `F`."""
    upstream = dial(path)
    try:
        upstream.settimeout(10.0)
        upstream.sendall(HANDOFF + f"Q {name}\n".encode())
        data = b""
        while b"\n" not in data:
            chunk = upstream.recv(256)
            if not chunk:
                break
            data += chunk
    finally:
        upstream.close()
    return data.decode("ascii", "replace").strip()


DNS_ADDRESSES = ("127.0.0.1", "127.0.0.53")


def bind_dns() -> list:
    """UDP and TCP port 53 on the DNS addresses; none when one cannot be bound.

    No SO_REUSEADDR on the UDP sockets (nor SO_REUSEPORT on any): the workload, which
    runs as the same user, could otherwise bind the same port beside the bridge.
    """
    out = []
    try:
        for host in DNS_ADDRESSES:
            udp = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
            out.append(udp)
            udp.bind((host, 53))
            tcp = listen(host, 53)
            if isinstance(tcp, str):
                raise OSError(tcp)
            out.append(tcp)
    except OSError:
        for sock in out:
            sock.close()
        return []
    return out


def serve_dns(module: str, sockets: list, path: str) -> None:
    """Load bridge_dns.py (after the workload started: its compile delays nothing) and serve."""
    space: dict = {"__name__": "bridge_dns"}
    with open(module, "rb") as f:
        exec(compile(f.read(), module, "exec"), space)  # noqa: S102 (krate's own file, copied)
    space["serve"](
        sockets,
        lambda name: ask(path, name),
        listen,
        lambda client, target: hand_over(client, path, target, "T"),
    )


def say(line: str) -> None:
    """Tell krate whether CMD ran: `started`, or why not (one line, on --ack; else stderr)."""
    text = (line if line == STARTED else "krate-bridge: " + " ".join(line.split())) + "\n"
    if not ACK:
        if line != STARTED:
            sys.stderr.write(text)
        return
    try:  # noqa: SIM105
        os.write(ACK[0], text.encode(errors="replace"))
    except OSError:
        pass
    os.close(ACK.pop())


def listen(host: str, port: int):
    """A listening socket, or the reason there is none (e.g. `socket()` refused)."""
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = None
    try:
        sock = _socket.socket(family, STREAM)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        if sock is not None:
            sock.close()
        return exc.strerror or type(exc).__name__
    return sock


def parse(
    argv: list[str],
) -> tuple[str, int, int, list[str], int | None, list[str], str | None]:
    if "--" not in argv:
        raise SystemExit(
            "usage: bridge.py --socket PATH --http P --socks P [--forward H:P]... "
            "[--go FD] [--ack FD] [--dns FILE] -- CMD"
        )
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1 :]
    path, http, socks, forwards, go, dns = "", 0, 0, [], None, None
    for i in range(0, len(opts), 2):
        name, value = opts[i], opts[i + 1]
        if name == "--socket":
            path = value
        elif name == "--http":
            http = int(value)
        elif name == "--socks":
            socks = int(value)
        elif name == "--forward":
            forwards.append(value)
        elif name == "--go":
            go = int(value)
        elif name == "--dns":
            dns = value
        elif name == "--ack":
            try:
                os.set_inheritable(int(value), False)  # krate's alone: CMD never gets it
                ACK.append(int(value))
            except OSError:  # not inherited: say it on stderr
                pass
    return path, http, socks, forwards, go, command, dns


def wait_for_go(fd: int) -> bool:
    """krate records the run's start while the sandbox and this bridge start up, then
    writes one byte here. End of file without it means krate stopped: CMD never runs."""
    try:
        return os.read(fd, 1) == GO
    except OSError:
        return False
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    path, http, socks, forwards, go, command, dns = parse(argv)
    if not command:
        raise SystemExit("no command given")
    _thread.stack_size(256 * 1024)
    listeners: list[tuple[object, str | None]] = []
    for port in (http, socks):
        sock = listen("127.0.0.1", port)
        if isinstance(sock, str):
            say(f"cannot listen on 127.0.0.1:{port} in the sandbox ({sock})")
            return 125
        listeners.append((sock, None))
    for target in forwards:
        host, _, port = target.rpartition(":")
        addresses = ("127.0.0.1", "::1") if host == "localhost" else (host,)
        for address in addresses:
            sock = listen(address, int(port))
            # one it cannot listen on (below 1024) is reached through the proxy variables
            if not isinstance(sock, str):
                listeners.append((sock, target if host != "::1" else f"[::1]:{port}"))

    # Handlers first, so a signal that arrives while the workload starts is not lost
    # (it would otherwise kill the bridge); it is passed on once the workload exists.
    child: list[int] = []
    pending: list[int] = []
    terminal = has_terminal()
    skipped = {getattr(_signal, name) for name in FROM_TERMINAL} if terminal else set()

    def forward(signum: int, _frame: object) -> None:
        if signum in skipped:
            return
        if not child:
            pending.append(signum)
            return
        try:
            if terminal:
                os.kill(child[0], signum)
            else:
                os.killpg(child[0], signum)
        except OSError:
            pass

    for name in FORWARDED_SIGNALS:
        _signal.signal(getattr(_signal, name), forward)
    if go is not None and not wait_for_go(go):
        say("krate did not let the workload start")
        return 125
    dns_sockets = bind_dns() if dns else []  # before the workload exists: it cannot take them
    try:
        # Its own process group: krate signals the sandbox's first process group (the
        # bridge), and the bridge passes each signal on exactly once to the workload's group.
        pid = os.posix_spawnp(
            command[0],
            command,
            os.environ,  # posix.environ: the environment as the bytes it came as
            setsigdef=[getattr(_signal, name) for name in RESTORED_SIGNALS],
            **({} if terminal else {"setpgroup": 0}),
        )
    except FileNotFoundError:
        say(f"{command[0]}: command not found")
        return 127
    except PermissionError:
        say(f"{command[0]}: cannot execute (permission denied)")
        return 126
    except OSError as exc:
        say(f"{command[0]}: cannot execute ({exc.strerror})")
        return 126
    child.append(pid)
    say(STARTED)
    # The threads (and the ones they start) never take the signals to pass on: a signal
    # the kernel gave one of them would wait for the main thread, blocked in waitpid.
    passed = {getattr(_signal, name) for name in FORWARDED_SIGNALS}
    _signal.pthread_sigmask(_signal.SIG_BLOCK, passed)
    for sock, target in listeners:
        _thread.start_new_thread(serve, (sock, path, target))
    if dns_sockets:
        _thread.start_new_thread(serve_dns, (dns, dns_sockets, path))
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, passed)
    for signum in pending:
        forward(signum, None)
    _pid, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except BaseException as exc:  # anything before CMD started: one line for krate, no traceback
        say(str(exc.code) if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}")
        code = 125
    sys.stdout.flush()
    os._exit(code)
