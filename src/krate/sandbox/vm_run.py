"""What the guest runs: `run.sh`, written per run into the control share (never on a command line).

The command, its environment and its folder travel in a file on the run's
read-only control share rather than on the kernel command line, which every
local user can read in QEMU's argv (`ps`). The file is private to the run's
folder (0600) and removed with it.

In the guest, `run.sh` sets the run's rlimits, then enters the image root and
executes the workload through krate's busybox (bind-mounted at /.krate/busybox,
so an image without a shell works): `env -i` gives it exactly the run's
environment, `nsenter -S/-G` drops to the image's user (no supplementary groups),
and a `sh -c` changes into the working folder and `exec`s the command, so a
missing command is 127 and one that cannot be executed 126, as on the host.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import NamedTuple

BUSYBOX = "/.krate/busybox"
NEWROOT = "/newroot"
GUEST_WORKSPACE = PurePosixPath("/work")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP = 'cd "$1" || exit 125; shift; exec "$@"'


class GuestUser(NamedTuple):
    uid: int = 0
    gid: int = 0

    @classmethod
    def parse(cls, text: str) -> GuestUser:
        """`UID[:GID]`, numeric (an image's user after lookup in its /etc/passwd)."""
        uid, _, gid = text.partition(":")
        return cls(int(uid), int(gid or uid))


ROOT = GuestUser()


def guest_cwd(cwd: str, workspace: str) -> str:
    """The guest's working folder for host folder `cwd`: the same place under /work."""
    cwd_p, ws = PurePosixPath(cwd), PurePosixPath(workspace)
    if cwd_p == ws or ws in cwd_p.parents:
        return str(GUEST_WORKSPACE / cwd_p.relative_to(ws))
    return str(GUEST_WORKSPACE)


def script(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    user: GuestUser = ROOT,
    *,
    cpu_seconds: int | None = None,
    processes: int | None = None,
) -> str:
    """run.sh for one run (shell-quoted throughout: values are never interpreted)."""
    q = shlex.quote
    lines = ["# krate run.sh: see src/krate/sandbox/vm_run.py"]
    if cpu_seconds is not None:
        lines.append(f"ulimit -t {int(cpu_seconds)} || exit 125")
    if processes is not None:
        lines.append(f"ulimit -u {int(processes)} || exit 125")
    command = [f"exec chroot {NEWROOT} {BUSYBOX} env -i"]
    command += [q(f"{name}={value}") for name, value in env.items() if "=" not in name]
    if user != ROOT:
        command += [BUSYBOX, "nsenter", "-S", str(user.uid), "-G", str(user.gid)]
    command += [BUSYBOX, "sh", "-c", q(STEP), "krate", q(cwd), *(q(a) for a in argv)]
    lines.append(" \\\n  ".join(command))
    return "\n".join(lines) + "\n"


def guest_env(
    env: Mapping[str, str], image_env: Mapping[str, str] | None, user: GuestUser
) -> dict[str, str]:
    """The workload's environment: the run's (scrubbed) with the image's PATH and HOME.

    The host's PATH and HOME name host folders, which the guest does not have.
    """
    out = dict(env)
    out["PATH"] = DEFAULT_PATH
    out["HOME"] = "/root" if user.uid == 0 else "/"
    out["TMPDIR"] = "/tmp"
    out.update(image_env or {})
    return out
