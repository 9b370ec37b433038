"""Unix sockets named by the environment: which socket files to hide from the workload.

A Unix socket on a read-only mount can still be connected to, so stripping
`SSH_AUTH_SOCK` from the environment is not enough: the agent answers whoever finds
its path. The socket file named by every stripped variable is hidden too, and a
variable whose value names a socket is stripped (unless passed explicitly) whatever
its name (an editor's, a terminal multiplexer's, an unknown agent's). Values are
read in the address forms in use: a plain path (`SSH_AUTH_SOCK`; tmux's
`path,pid,n`), `unix://PATH` (`DOCKER_HOST`), `unix:path=PATH,guid=...;...` (D-Bus),
`unix:PATH` (PulseAudio, kitty), `PATH:PID:1` (`GPG_AGENT_INFO`).

`XDG_RUNTIME_DIR` holds the user's session sockets (D-Bus, gpg-agent, the keyring,
Podman, PipeWire); normally it is under `/run`, which the sandbox already empties,
and `runtime_dir` names it when it is somewhere else.

Reads metadata only (stat); returns paths, never the rest of a value.
"""

from __future__ import annotations

import os

_SOCK, _FMT = 0o140000, 0o170000
_PREFIXES = ("unix://", "unix:path=", "unix:", "path=")
MAX_VALUE = 4096


def candidates(value: str) -> list[str]:
    """Absolute paths a socket address in `value` may name; pure."""
    if len(value) > MAX_VALUE or ("/" not in value):
        return []
    out: list[str] = []
    for part in [value, *value.replace(";", ",").split(",")]:
        part = part.strip()
        for prefix in _PREFIXES:
            if part.startswith(prefix):
                part = part[len(prefix) :]
                break
        if not part.startswith("/"):
            continue
        for path in (part, part.split(":", 1)[0]):
            if path not in out:
                out.append(path)
    return out


def named(value: str) -> list[str]:
    """The existing Unix sockets `value` names (following symlinks)."""
    found = []
    for path in candidates(value):
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            continue
        if mode & _FMT == _SOCK:
            found.append(path)
    return found


def runtime_dir(value: str | None, workspace: str, uid: int) -> str | None:
    """`XDG_RUNTIME_DIR` when it is what the XDG spec says it is: the user's own 0700 folder.

    Never `/` and never a folder holding the workspace, whatever the variable says.
    """
    if not value or not value.startswith("/"):
        return None
    try:
        real = os.path.realpath(value)
        st = os.stat(real)
    except (OSError, ValueError):
        return None
    if real == "/" or workspace == real or workspace.startswith(real.rstrip("/") + "/"):
        return None
    if st.st_mode & _FMT != 0o040000 or st.st_uid != uid or st.st_mode & 0o077:
        return None
    return real
