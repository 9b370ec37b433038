"""The sandbox's resolver files when the bridge answers DNS (bridge_dns.py).

- resolv.conf: `nameserver 127.0.0.1` (the bridge), `search .` (a dotted name is
  not also asked as name.<domain>, which would show up as more denials), one-second
  timeout, two attempts.
- nsswitch.conf: only when its `hosts:` line lacks `dns` (`hosts: files` alone
  never asks DNS); otherwise the host's file is kept.
- hosts: the loopback names only (localhost and this machine's name). Every other
  name, including one the host's /etc/hosts pins, goes to the bridge and so to the
  policy; the proxy then resolves it with the host's own files. The host's address
  for such a name is unreachable from the sandbox's network anyway.

Each is a read-only data file (0444) on the real path: /etc/resolv.conf is often a
symlink into /run, which is a fresh tmpfs in the sandbox, and bubblewrap follows
the link inside its new root.
"""

from __future__ import annotations

import os
from pathlib import Path

from krate.sandbox.spec import Bind

RESOLV_CONF = b"nameserver 127.0.0.1\nsearch .\noptions ndots:1 timeout:1 attempts:2\n"
PRIVATE = ("/run/", "/tmp/")  # fresh tmpfs folders in the sandbox: a file can be made there


def target(path: str) -> Path | None:
    """Where bubblewrap must put the file for `path`, or None when it cannot."""
    real = os.path.realpath(path)
    if os.path.exists(real) or real.startswith(PRIVATE):
        return Path(real)
    return None


def hosts() -> bytes:
    name = os.uname().nodename
    extra = f" {name}" if name and name != "localhost" and " " not in name else ""
    return f"127.0.0.1 localhost{extra}\n::1 localhost ip6-localhost ip6-loopback\n".encode()


def nsswitch(text: str) -> str | None:
    """The file with `dns` added to its hosts line, or None when it already asks DNS."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        words = line.split("#", 1)[0].split()
        if words and words[0] == "hosts:":
            if "dns" in words:
                return None
            lines[i] = " ".join(words) + " dns"
            return "\n".join(lines) + "\n"
    return None  # no hosts line: glibc's default asks DNS


def binds(etc: str = "/etc") -> tuple[Bind, ...]:
    out = []
    for name, data in (("resolv.conf", RESOLV_CONF), ("hosts", hosts())):
        where = target(f"{etc}/{name}")
        if where is not None:
            out.append(Bind(where, where, data=data))
    where = target(f"{etc}/nsswitch.conf")
    if where is not None and where.exists():
        try:
            changed = nsswitch(where.read_text(errors="replace"))
        except OSError:
            changed = None
        if changed is not None:
            out.append(Bind(where, where, data=changed.encode()))
    return tuple(out)
