"""The macOS backend: a SandboxSpec as a Seatbelt (SBPL) profile for `sandbox-exec`.

Same meaning as the bubblewrap backend: everything readable except hidden paths;
writes only in the workspace, allow_write folders and the run's private TMPDIR;
protected paths read-only (and their parent folders cannot be renamed or
removed, so a protected file cannot be moved out of the way and replaced);
network only on the workload's own loopback; no `mach-lookup` beyond a short
list of system services (the keychain's services are not in it).

Seatbelt evaluates the *last* matching rule, so rules are emitted shallow
first, like the bubblewrap mounts: the most specific path wins. Unlike
bubblewrap, SBPL can name paths that do not exist yet, so the declared
(unfiltered) lists are used: a protected `krate.toml` cannot even be created.

Generates text only. It is pinned by golden files on Linux and executed by the
tests on macOS; never run it with a profile built from anything but a spec.
"""

from __future__ import annotations

from pathlib import Path

from krate.sandbox.spec import SandboxSpec, is_within

# Mach services a command-line workload needs (logging, name lookup via the
# directory service, notifications, time zones, TLS trust evaluation). The
# keychain (`com.apple.securityd*`, `com.apple.SecurityServer`) is not here.
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
)
# Device files a terminal program writes to.
WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/tty", "/dev/dtracehelper", "/dev/stdout",
                    "/dev/stderr")  # fmt: skip
SEATBELT_LIMIT = 1000  # Seatbelt rejects string literals over 1025 bytes


def quote(path: Path | str) -> str:
    text = str(path)
    if len(text.encode()) > SEATBELT_LIMIT:
        raise ValueError(f"path too long for a Seatbelt profile: {text[:60]}...")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_REGEX_SPECIAL = set(".^$*+?()[]{}|\\")


def glob_regex(path: Path | str) -> str:
    """An SBPL regex for a built-in glob entry: `*` within one component, and what is inside.

    Seatbelt, unlike bubblewrap, can name paths that do not exist yet, so the pattern
    itself is denied rather than today's matches.
    """
    text = str(path)
    if '"' in text or len(text.encode()) > SEATBELT_LIMIT:
        raise ValueError(f"cannot write a Seatbelt pattern for {text[:60]}")
    body = "".join("[^/]*" if c == "*" else "\\" + c if c in _REGEX_SPECIAL else c for c in text)
    return f'#"^{body}(/.*)?$"'


def with_tmpdir(spec: SandboxSpec, folder: Path) -> SandboxSpec:
    """The spec with its private TMPDIR set to `folder` (created by the caller, removed after)."""
    env = dict(spec.env)
    for name in ("TMPDIR", "TMP", "TEMP", "TEMPDIR"):
        if name in env:
            env[name] = str(folder)
    env["TMPDIR"] = str(folder)
    return spec._replace(env=env, tmpdir=str(folder))


def _ancestors(path: Path, root: Path) -> list[Path]:
    out = []
    parent = path.parent
    while parent != root and is_within(parent, root):
        out.append(parent)
        parent = parent.parent
    return out


def profile(spec: SandboxSpec, *, title: str = "") -> str:
    """The SBPL text for `spec`."""
    writable = list(spec.declared_writable or spec.writable)
    read_only = list(spec.declared_read_only or spec.read_only)
    hidden = list(spec.declared_hidden or spec.hidden)
    lines = ["(version 1)"]
    if title:
        lines.append(f";; krate: {title}")
    lines += [
        "(deny default)",
        "",
        ";; processes: run programs, see and signal only this sandbox's processes",
        "(allow process-exec process-fork)",
        "(allow signal (target same-sandbox))",
        "(allow process-info* (target same-sandbox))",
        "(allow sysctl-read)",
        "(allow ipc-posix-shm* ipc-posix-sem)",
        "(allow pseudo-tty)",
        "(allow file-ioctl)",
        "(allow mach-lookup",
        *[f'  (global-name "{name}")' for name in MACH_SERVICES],
        ")",
        "",
        ";; network: the workload's own loopback only",
        '(allow network-bind network-inbound (local ip "localhost:*"))',
        '(allow network-outbound (remote ip "localhost:*"))',
        "",
        ";; files: read everything, write only where the policy allows",
        "(allow file-read*)",
        "(allow file-write*",
        *[f"  (literal {quote(d)})" for d in WRITABLE_DEVICES],
        f"  (subpath {quote(spec.tmpdir)})",
        ")",
    ]
    rules: list[tuple[int, int, str, Path]] = []
    for path in writable:
        rules.append((len(path.parts), 0, "write", path))
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
        q = quote(path)
        if kind == "write":
            lines.append(f"(allow file-write* (subpath {q}))")
        elif kind == "read-only":
            lines.append(f"(deny file-write* (subpath {q}))")
        elif kind == "pin":
            lines.append(f"(deny file-write-unlink (literal {q}))")
        elif "*" in path.name:
            lines.append(f"(deny file-read* file-write* (regex {glob_regex(path)}))")
        else:
            lines.append(f"(deny file-read* file-write* (subpath {q}))")
    pinned: list[Path] = []
    for path in hidden:
        # Seatbelt rules follow paths: moving a hidden path's parent would carry the secret
        # out from under its rule, so parents in writable places cannot be renamed or removed.
        for parent in _ancestors(path, Path("/")):
            if parent not in pinned and any(is_within(parent, w) for w in writable):
                pinned.append(parent)
    for parent in sorted(pinned, key=lambda p: (len(p.parts), str(p))):
        lines.append(f"(deny file-write-unlink (literal {quote(parent)}))")
    lines.append("")
    return "\n".join(lines)


def command(spec: SandboxSpec, exe: str) -> list[str]:
    return [exe, "-p", profile(spec), "--", *spec.argv]


def visible_inside(path: Path, spec: SandboxSpec) -> bool:
    from krate.policy.paths import under

    hidden = spec.declared_hidden or spec.hidden
    return not any(under(str(path), str(h)) for h in hidden)
