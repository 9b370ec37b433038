"""The macOS backend: a SandboxSpec as a Seatbelt (SBPL) profile for `sandbox-exec`.

Same meaning as the bubblewrap backend: everything readable except hidden paths;
writes only in the workspace, allow_write folders and the run's private TMPDIR;
protected paths read-only (and their parent folders cannot be renamed or
removed, so a protected file cannot be moved out of the way and replaced);
outbound network only to the run's proxy and forwarded loopback ports; no
`mach-lookup` beyond a short list of system services (not the keychain's).

Seatbelt evaluates the *last* matching rule, so path rules are emitted shallow
first, like the bubblewrap mounts: the most specific path wins (the TMPDIR and
a workspace inside a hidden folder come after that folder's hide). Unlike
bubblewrap, SBPL can name paths that do not exist yet, so the declared
(unfiltered) lists are used: a protected `krate.toml` cannot even be created.
Seatbelt compares path bytes while APFS folds case and reaches `/Users` also
through `/System/Volumes/Data`: each path rule is one regex covering both.

Generates text only. Its decisions are checked on Linux by the SBPL evaluator in
tests/sbpl.py (tests/test_seatbelt_decisions.py), its text pinned by golden
files, and it is executed by the tests on macOS; never run it with a profile
built from anything but a spec. The rules follow Codex's base policy and
Anthropic's sandbox-runtime where they agree (sysctls, devices, sockets).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from krate.sandbox.spec import SandboxSpec, is_within

# Mach services a command-line workload needs (logging, name lookup via the
# directory service, notifications, time zones, TLS trust evaluation, the per-user
# folders Xcode's tools ask `dirhelper` for). The keychain (`com.apple.securityd*`,
# `com.apple.SecurityServer`) is not here.
MACH_SERVICES = (
    "com.apple.cfprefsd.agent",
    "com.apple.cfprefsd.daemon",
    "com.apple.diagnosticd",
    "com.apple.logd",
    "com.apple.system.logger",
    "com.apple.system.notification_center",
    "com.apple.system.opendirectoryd.libinfo",
    "com.apple.system.opendirectoryd.membership",
    "com.apple.timed",
    "com.apple.trustd",
    "com.apple.trustd.agent",
    "com.apple.FSEvents",
    "com.apple.coreservices.launchservicesd",
    "com.apple.lsd.mapdb",
    "com.apple.bsd.dirhelper",
    "com.apple.PowerManagement.control",
)
# sysctls a workload may read: the machine's shape, the OS version, its own process
# group. Not `kern.procargs*` (argv and environment of any process of the user, krate's
# included) nor `kern.proc.all` (every process). The list is Codex's and sandbox-runtime's.
SYSCTL_NAMES = (
    "hw.activecpu", "hw.busfrequency_compat", "hw.byteorder", "hw.cacheconfig",
    "hw.cachelinesize", "hw.cachelinesize_compat", "hw.cpufamily", "hw.cpufrequency",
    "hw.cpufrequency_compat", "hw.cpusubtype", "hw.cputype", "hw.l1dcachesize",
    "hw.l1dcachesize_compat", "hw.l1icachesize", "hw.l1icachesize_compat", "hw.l2cachesize",
    "hw.l2cachesize_compat", "hw.l3cachesize_compat", "hw.logicalcpu", "hw.logicalcpu_max",
    "hw.machine", "hw.memsize", "hw.model", "hw.ncpu", "hw.nperflevels", "hw.packages",
    "hw.pagesize", "hw.pagesize_compat", "hw.physicalcpu", "hw.physicalcpu_max",
    "hw.tbfrequency", "hw.tbfrequency_compat", "hw.vectorunit", "kern.argmax", "kern.boottime",
    "kern.hostname", "kern.maxfiles", "kern.maxfilesperproc", "kern.maxproc", "kern.ngroups",
    "kern.osproductversion", "kern.osrelease", "kern.ostype", "kern.osvariant_status",
    "kern.osversion", "kern.secure_kernel", "kern.tcsm_available", "kern.tcsm_enable",
    "kern.usrstack64", "kern.version", "kern.willshutdown", "machdep.ptrauth_enabled",
    "security.mac.lockdown_mode_state", "sysctl.proc_cputype", "sysctl.proc_translated",
    "vm.loadavg",
)  # fmt: skip
SYSCTL_PREFIXES = (
    "hw.optional.", "hw.perflevel", "kern.proc.pgrp.", "kern.proc.pid.", "machdep.cpu.",
    "net.routetable.",
)  # fmt: skip
# Written as "reads" by Java (CPU type) and V8 (thread count): userspace passes a buffer.
SYSCTL_WRITES = ("kern.grade_cputype", "kern.tcsm_enable")
# Device files: read and written (/dev/stdout and /dev/stderr are links to /dev/fd/N, and
# Seatbelt checks the link's target); read only; and those ioctl may be used on. Every
# other device (other terminals' ttys, /dev/bpf*, disks) is neither read nor written.
RW_DEVICES = ("/dev/null", "/dev/zero", "/dev/tty", "/dev/dtracehelper", "/dev/ptmx")
RO_DEVICES = ("/dev/random", "/dev/urandom", "/dev/autofs_nowait")
FD_REGEX = '#"^/dev/fd/[0-9]+$"'
TTYS_REGEX = '#"^/dev/ttys[0-9]+$"'
PTY_EXTENSION = "com.apple.sandbox.pty"  # the ptys the sandbox itself opened (Codex)
# APFS firmlinks: /Users/a/.ssh is also /System/Volumes/Data/Users/a/.ssh.
DATA_VOLUME = "/System/Volumes/Data"
SANDBOX_EXEC = "/usr/bin/sandbox-exec"  # never one found on PATH
CS_DARWIN_USER_CACHE_DIR = 65538  # confstr(3) name: /var/folders/xx/yyy/C/
SEATBELT_LIMIT = 1000  # Seatbelt rejects string literals over 1025 bytes
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def quote(path: Path | str) -> str:
    text = str(path)
    if len(text.encode()) > SEATBELT_LIMIT:
        raise ValueError(f"path too long for a Seatbelt profile: {text[:60]}...")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_REGEX_SPECIAL = set(".^$*+?()[]{}|\\")


def _regex_text(text: str) -> str:
    """`text` as a case-insensitive SBPL regex body: APFS folds ASCII case, so must the rule.

    `*` stands for any name part (the built-in globs); `"` cannot appear in `#"..."`
    and becomes `.`, which only widens a deny.
    """
    out = []
    for c in text:
        if c == "*":
            out.append("[^/]*")
        elif c == '"':
            out.append(".")
        elif c.isascii() and c.isalpha():
            out.append(f"[{c.upper()}{c.lower()}]")
        elif c in _REGEX_SPECIAL:
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def path_regex(path: Path | str, *, subtree: bool = True) -> str:
    """The one regex a rule needs for `path` (and, `subtree`, what is inside it).

    Any ASCII case (APFS folds case: ~/.SSH is ~/.ssh, whichever spelling the
    kernel reports) and either firmlink spelling (/System/Volumes/Data/Users/... is
    /Users/...). It matches the path itself too, so a protected name that does not
    exist yet cannot be created (`subpath` alone is reported to leave that gap: Codex).
    """
    text = str(path)
    volume = "" if is_within(Path(text), Path(DATA_VOLUME)) else f"({_regex_text(DATA_VOLUME)})?"
    body = f"^{volume}{_regex_text(text)}{'(/.*)?' if subtree else ''}$"
    if len(body.encode()) > SEATBELT_LIMIT:
        raise ValueError(f"path too long for a Seatbelt profile: {text[:60]}...")
    return f'#"{body}"'


def glob_regex(path: Path | str) -> str:
    """An SBPL regex for a built-in glob entry: `*` within one component, and what is inside.

    Seatbelt, unlike bubblewrap, can name paths that do not exist yet, so the pattern
    itself is denied rather than today's matches.
    """
    return path_regex(path)


def _spellings(path: Path | str) -> list[str]:
    text = str(path)
    if is_within(Path(text), Path(DATA_VOLUME)):
        return [text]
    return [text, DATA_VOLUME + text if text != "/" else DATA_VOLUME]


def _exact(path: Path | str, kind: str = "subpath") -> str:
    """`(subpath ...)` filters for both firmlink spellings of `path`, exact case (sockets)."""
    return " ".join(f"({kind} {quote(p)})" for p in _spellings(path))


def _allowed(path: Path, *, subtree: bool = True) -> str:
    """The filter of an allow rule: the any-case regex, or (a `"` or `*` in the path, which
    the regex would widen to any character or name) the exact spellings."""
    if '"' in str(path) or "*" in str(path):
        return _exact(path, "subpath" if subtree else "literal")
    return f"(regex {path_regex(path, subtree=subtree)})"


def with_tmpdir(spec: SandboxSpec, folder: Path) -> SandboxSpec:
    """The spec with its private TMPDIR set to `folder` (created by the caller, removed after)."""
    env = dict(spec.env)
    for name in ("TMPDIR", "TMP", "TEMP", "TEMPDIR"):
        if name in env:
            env[name] = str(folder)
    env["TMPDIR"] = str(folder)
    return spec._replace(env=env, tmpdir=str(folder))


def user_cache_dir() -> str | None:
    """The account's DARWIN_USER_CACHE_DIR (clang's module cache), resolved; None off macOS."""
    if sys.platform != "darwin":
        return None
    try:
        found = os.confstr(CS_DARWIN_USER_CACHE_DIR)
    except (OSError, ValueError):
        return None
    return os.path.realpath(found) if found else None


def loopback_ports(spec: SandboxSpec) -> list[int]:
    """Host-loopback TCP ports the workload may connect to: the proxy's and the forwarded ones.

    The proxy's port is read from the proxy variables the egress session put in the
    spec's environment (as Codex does); `spec.loopback_ports` adds the forwarded ports.
    """
    ports = list(spec.loopback_ports)
    if spec.network != "proxy":
        return sorted(set(ports))
    for name in PROXY_VARIABLES:
        for value in (spec.env.get(name), spec.env.get(name.lower())):
            port = _loopback_port(value or "")
            if port is not None:
                ports.append(port)
    return sorted(set(ports))


def _loopback_port(url: str) -> int | None:
    rest = url.partition("://")[2] or url
    hostport = rest.split("/", 1)[0].rpartition("@")[2]
    host, _, port = hostport.rpartition(":")
    if host.lower() not in LOOPBACK_HOSTS or not port.isdigit():
        return None
    return int(port) if 0 < int(port) < 65536 else None


def _ancestors(path: Path, root: Path) -> list[Path]:
    out = []
    parent = path.parent
    while parent != root and is_within(parent, root):
        out.append(parent)
        parent = parent.parent
    return out


def _comment(text: Path | str) -> str:
    """`text` for the end of a `;` comment: a line break would end the comment early."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _rule(head: str, filters: list[str]) -> str:
    return f"({head} {' '.join(filters)})"


def _header(title: str, spec: SandboxSpec) -> list[str]:
    lines = ["(version 1)"]
    if title:
        lines.append(f";; krate: {_comment(title)}")
    ports = loopback_ports(spec)
    outbound = [f'(remote ip "localhost:{p}")' for p in ports]
    rw = [f"(literal {quote(d)})" for d in RW_DEVICES]
    ro = [f"(literal {quote(d)})" for d in RO_DEVICES]
    own_pty = f'(require-all (regex {TTYS_REGEX}) (extension "{PTY_EXTENSION}"))'
    return lines + [
        "(deny default)",
        "",
        ";; processes: run programs, see and signal only this sandbox's processes",
        "(allow process-exec process-fork)",
        "(allow signal (target same-sandbox))",
        "(allow process-info* (target same-sandbox))",
        "(allow sysctl-read",
        *[f'  (sysctl-name "{name}")' for name in SYSCTL_NAMES],
        *[f'  (sysctl-name-prefix "{name}")' for name in SYSCTL_PREFIXES],
        ")",
        '(deny sysctl-read (sysctl-name-prefix "kern.procargs"))',
        _rule("allow sysctl-write", [f'(sysctl-name "{n}")' for n in SYSCTL_WRITES]),
        "(allow ipc-posix-shm* ipc-posix-sem)",
        "(allow pseudo-tty)",
        "(allow user-preference-read)",
        "(allow mach-lookup",
        *[f'  (global-name "{name}")' for name in MACH_SERVICES],
        ")",
        "",
        ";; network: listen on any address but accept only from loopback; connect only to",
        ";; this run's proxy and the loopback ports its policy names",
        '(allow network-bind (local ip "*:*"))',
        '(allow network-inbound (local ip "localhost:*"))',
        *([_rule("allow network-outbound", outbound)] if outbound else []),
        "(allow system-socket (socket-domain AF_UNIX))",
        "",
        ";; devices: the terminal, /dev/fd (/dev/stdout, /dev/stderr), ptys; no other device",
        "(allow file-read*)",
        '(deny file-read* file-write* (subpath "/dev"))',
        '(allow file-read-metadata (subpath "/dev"))',
        _rule("allow file-read* file-write*", [*rw, f"(regex {FD_REGEX})"]),
        _rule("allow file-read*", ro),
        _rule("allow file-read* file-write*", [own_pty]),
        _rule("allow file-ioctl", [*rw, *ro[:2], f"(regex {TTYS_REGEX})"]),
        "",
        ";; files: read everything but hidden paths, write only where the policy allows",
    ]


def profile(spec: SandboxSpec, *, title: str = "", user_cache: str | None = None) -> str:
    """The SBPL text for `spec` (`user_cache`: DARWIN_USER_CACHE_DIR, writable for Xcode)."""
    writable = list(spec.declared_writable or spec.writable)
    # The run's TMPDIR lives in krate's hidden data folder: as a writable path it is ordered
    # by depth like the others, so its allow comes after (and wins over) that folder's hide.
    extra = [Path(p) for p in (spec.tmpdir, user_cache) if p and Path(p).is_absolute()]
    writable += [p for p in extra if p not in writable]
    read_only = list(spec.declared_read_only or spec.read_only)
    hidden = list(spec.declared_hidden or spec.hidden)
    lines = _header(title, spec)
    rules: list[tuple[int, int, str, Path]] = []
    for path in writable:
        rules.append((len(path.parts), 0, "write", path))
        # A writable path inside a hidden one (the TMPDIR, a workspace in a hidden folder):
        # the folders on the way stay unlistable, but `realpath` may stat them.
        for parent in _ancestors(path, Path("/")):
            if any(is_within(parent, h) for h in hidden if "*" not in h.name):
                rules.append((len(parent.parts), 3, "reveal", parent))
    for path in read_only:
        rules.append((len(path.parts), 1, "read-only", path))
        owners = [w for w in writable if is_within(path, w) and w != path]
        if owners:
            root = max(owners, key=lambda w: len(w.parts))
            for parent in _ancestors(path, root):
                rules.append((len(parent.parts), 1, "pin", parent))
    for path in hidden:
        rules.append((len(path.parts), 2, "hide", path))
    for _depth, _rank, kind, path in sorted(set(rules), key=lambda r: (r[0], r[1], str(r[3]))):
        if kind == "write":
            lines.append(f"(allow file-read* file-write* {_allowed(path)}) ; {_comment(path)}")
        elif kind == "reveal":
            found = _allowed(path, subtree=False)
            lines.append(f"(allow file-read-metadata {found}) ; {_comment(path)}")
        elif kind == "read-only":
            lines.append(f"(deny file-write* (regex {path_regex(path)})) ; {_comment(path)}")
        elif kind == "pin":
            regex = path_regex(path, subtree=False)
            lines.append(f"(deny file-write-unlink (regex {regex})) ; {_comment(path)}")
        else:
            lines.append(
                f"(deny file-read* file-write* (regex {path_regex(path)})) ; {_comment(path)}"
            )
    # Seatbelt rules follow paths: moving a writable root (the workspace into the TMPDIR
    # and back) or a hidden path's parent would carry protected and hidden files out from
    # under their rules, so these cannot be renamed or removed (bubblewrap: mount points).
    pinned = [w for w in writable if not any(o != w and is_within(w, o) for o in writable)]
    for path in hidden:
        for parent in _ancestors(path, Path("/")):
            if parent not in pinned and any(is_within(parent, w) for w in writable):
                pinned.append(parent)
    for parent in sorted(pinned, key=lambda p: (len(p.parts), str(p))):
        regex = path_regex(parent, subtree=False)
        lines.append(f"(deny file-write-unlink (regex {regex})) ; {_comment(parent)}")
    own = [w for w in writable if user_cache is None or w != Path(user_cache)]
    lines += _local_sockets(own, [*read_only, *hidden])
    lines += [
        "",
        ";; hard links: never (a link to a read-only or hidden file in a writable folder",
        ";; would be written or read by the link's path)",
        "(deny file-link)",
        "",
    ]
    return "\n".join(lines)


def _local_sockets(writable: list[Path], closed: list[Path]) -> list[str]:
    """Unix sockets: bound and connected only in the run's writable places, not in closed ones."""
    where = [f"(subpath {quote(p)})" for w in writable for p in _spellings(w)]
    inside = sorted({c for c in closed if any(is_within(c, w) for w in writable)}, key=str)
    lines = ["", ";; local sockets: only in the run's own writable places"]
    for action, filters in (
        ("allow", where),
        ("deny", [f"(regex {path_regex(c)})" for c in inside]),
    ):
        for op, side in (("network-bind", "local"), ("network-outbound", "remote")):
            if filters:
                lines += [f"({action} {op}", *[f"  ({side} unix-socket {f})" for f in filters], ")"]
    return lines


def command(spec: SandboxSpec, exe: str = SANDBOX_EXEC) -> list[str]:
    return [exe, "-p", profile(spec, user_cache=user_cache_dir()), "--", *spec.argv]


def visible_inside(path: Path, spec: SandboxSpec) -> bool:
    """Can the workload read `path`? The profile's answer, for the 126/127 check before a run.

    As in the profile: the deepest hidden or writable path around it decides (hiding
    wins a tie), in any case and either firmlink spelling.
    """
    from krate.policy.paths import under

    def plain(p: Path | str) -> str:
        text = str(p)
        if text.startswith(DATA_VOLUME + "/"):
            text = text[len(DATA_VOLUME) :]
        return text.lower()

    def depth(roots: list[Path]) -> int:
        return max((len(r.parts) for r in roots if under(plain(path), plain(r))), default=-1)

    writable = [*(spec.declared_writable or spec.writable), Path(spec.tmpdir)]
    hidden = depth(list(spec.declared_hidden or spec.hidden))
    return hidden < 0 or depth(writable) > hidden
