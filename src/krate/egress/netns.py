"""Open the sandbox's low ports to its bridge, from outside, before the workload starts.

The bridge's DNS (bridge_dns.py) must listen on port 53, and on 80 and 443 for
allowed names, but it runs as the workload's user without capabilities. bubblewrap's
`--cap-add CAP_NET_BIND_SERVICE` does not help with krate's flags: bubblewrap nests a
second user namespace (`--disable-userns`), and the network namespace belongs to the
outer one. So krate, which created that outer namespace (bubblewrap ran as krate's
user, or as the one a root krate runs the sandbox as), sets it up from outside:
a forked child joins the sandbox's user and network namespaces (setns), writes
`net.ipv4.ip_unprivileged_port_start = 0` and adds 127.0.0.53/32 to `lo` (glibc's
AI_ADDRCONFIG ignores 127.0.0.1 alone, and would answer "no such name" before asking).
This happens after bubblewrap named the sandbox's init and before the go-ahead, so
the workload never runs without it; the workload keeps no capability and cannot undo
it (/proc/sys is read-only inside, and it has no capability in the outer namespace).

An ordinary krate forks: setns into a user namespace needs a single-threaded process,
and krate has its recorder thread. The child uses only ctypes (already loaded by the
lockdown on this path), os and _socket, and ends with os._exit. A root krate needs no
user namespace (it is capable in every one): the calling thread joins the network
namespace alone (setns of a network namespace is per thread), checks it is inside,
sets it up and goes back; about 0.6 ms against several for the fork.
"""

from __future__ import annotations

import contextlib
import os
import threading

NS_GET_USERNS = 0xB701
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
STUB = bytes((127, 0, 0, 53))
CHILD_TIMEOUT_S = 2.0
STEPS = ("", "joining the user namespace", "joining the network namespace",
         "setting ip_unprivileged_port_start", "adding 127.0.0.53 to lo", "fork")  # fmt: skip


def open_low_ports(pid: int) -> str | None:
    """Set up the network namespace of sandbox process `pid`; None, or what failed.

    The answer comes on a pipe as soon as the child is done: its exit (slow where
    namespaces are torn down, up to 10 ms here) is not waited for.
    """
    import ctypes
    import fcntl

    try:
        net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open the sandbox's network namespace: {exc.strerror}"
    try:
        try:
            user = fcntl.ioctl(net, NS_GET_USERNS)
        except OSError as exc:
            return f"cannot find the sandbox's user namespace: {exc.strerror}"
        libc = ctypes.CDLL(None, use_errno=True)
        if os.geteuid() == 0:  # capable in every namespace: no fork, this thread joins
            os.close(user)
            return _in_thread(libc, net)
        read, write = os.pipe()
        try:
            child = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            os.close(user)
            return "cannot fork"
        if child == 0:  # pragma: no cover (the child's coverage is not collected)
            code = 5
            try:  # whatever happens (a signal's exception too), the child ends here
                code = _inside(libc, user, net)
                os.write(write, bytes((code,)))
            finally:
                os._exit(code)
        # Its exit is slow (namespaces torn down): reaped by a thread of its own, so the
        # answer is not held up and no zombie stays in krate's process group.
        threading.Thread(target=_reap, args=(child,), daemon=True).start()
        os.close(user)
        os.close(write)
        try:
            import select

            ready, _w, _x = select.select([read], [], [], CHILD_TIMEOUT_S)
            said = os.read(read, 1) if ready else b""
        finally:
            os.close(read)
        if not ready:  # never hold the workload back for long: it runs without DNS
            with contextlib.suppress(OSError):
                os.kill(child, 9)
            return "the set-up took too long"
        code = said[0] if said else 5
        return None if code == 0 else f"{STEPS[code] if 0 < code < 6 else code} failed"
    finally:
        os.close(net)


def _reap(child: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child, 0)


def _in_thread(libc, net: int) -> str | None:
    """A root krate: the calling thread joins the sandbox's network namespace alone
    (setns of a network namespace is per thread), sets it up and goes back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(net, CLONE_NEWNET) != 0:
            return f"{STEPS[2]} failed"
        try:
            # the host's own setting must never be the one changed: check where we are
            inside = os.stat("/proc/thread-self/ns/net")
            target = os.fstat(net)
            same = (inside.st_dev, inside.st_ino) == (target.st_dev, target.st_ino)
            code = _set_up() if same else 2
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:  # never leave krate's thread inside
                os._exit(125)
    finally:
        os.close(home)
    return None if code == 0 else f"{STEPS[code]} failed"


def _inside(libc, user: int, net: int) -> int:  # pragma: no cover (runs in the child)
    try:
        if libc.setns(user, CLONE_NEWUSER) != 0:
            return 1
        if libc.setns(net, CLONE_NEWNET) != 0:
            return 2
    except OSError:
        return 2
    return _set_up()


def _set_up() -> int:  # pragma: no cover (runs in the child, or a thread inside)
    try:
        fd = os.open(PORT_START, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    except OSError:
        return 3
    try:
        return 0 if _add_stub_address() else 4
    except OSError:
        return 4


def _add_stub_address() -> bool:  # pragma: no cover (runs in the child)
    """RTM_NEWADDR 127.0.0.53/32 on lo (index 1 in a new namespace), over rtnetlink."""
    import _socket

    def attr(kind: int, data: bytes) -> bytes:
        return (4 + len(data)).to_bytes(2, "little") + kind.to_bytes(2, "little") + data

    # ifaddrmsg: AF_INET, /32, no flags, RT_SCOPE_HOST, lo; then IFA_LOCAL and IFA_ADDRESS
    body = bytes((2, 32, 0, 254)) + (1).to_bytes(4, "little") + attr(2, STUB) + attr(1, STUB)
    flags = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST, ACK, CREATE, EXCL
    head = (16 + len(body)).to_bytes(4, "little") + (20).to_bytes(2, "little")  # RTM_NEWADDR
    head += flags.to_bytes(2, "little") + (1).to_bytes(4, "little") + bytes(4)
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, 0)
    try:
        sock.settimeout(2.0)
        sock.sendto(head + body, (0, 0))
        ack = sock.recv(4096)
    finally:
        sock.close()
    if len(ack) < 20 or int.from_bytes(ack[4:6], "little") != 2:  # NLMSG_ERROR
        return False
    error = int.from_bytes(ack[16:20], "little", signed=True)
    return error in (0, -17)  # done, or already there (EEXIST)
