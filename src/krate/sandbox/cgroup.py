"""`limits.memory_mb` as a cgroup: the sandbox in its own child cgroup, limited, removed after.

Why a cgroup: an rlimit is per process and counts neither tmpfs files nor shared
mappings, so RLIMIT_DATA alone let a workload hold 300 MiB past a 64 MiB limit. A
memory cgroup charges every page the sandbox's processes use (heap, tmpfs, page
cache, MAP_SHARED) to one budget, and the kernel kills a process in it (or fails
the allocation) past the limit. Swap is limited too where the kernel accounts for
it, so pages cannot leave the budget by being swapped out.

Where: the nearest cgroup at or above krate's own in which krate may create a child
with the memory controller and move a process into it. cgroup v2 first (its
`cgroup.subtree_control` must list `memory`, and moving a process needs write access
to the common ancestor's `cgroup.procs`: on a systemd machine that is the user's
delegated `user@UID.service` subtree when krate runs inside it), then a v1 memory
hierarchy (root). Where there is none, `find()` returns None and the run is refused.

The launcher's child joins the cgroup before it executes bubblewrap (`join()`), so
nothing of the sandbox ever runs outside it. No library does this (systemd's D-Bus
API needs a D-Bus client and a user manager, and does not exist for root in a
container): the cgroup file system is a handful of reads and writes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from krate.records import NamedTuple

PREFIX = "krate-"
MB = 1024 * 1024


class Place(NamedTuple):
    """Where per-run cgroups are made: the parent folder and its cgroup version."""

    version: int  # 2 or 1
    parent: Path

    def describe(self) -> str:
        return f"cgroup v{self.version} ({self.parent})"


def find(proc: Path = Path("/proc"), may_use: Callable[[Path], bool] | None = None) -> Place | None:
    """The place for a per-run memory cgroup, or None when this user has none."""
    may_use = may_use or _may_use
    try:
        mountinfo = (proc / "self" / "mountinfo").read_text()
        membership = (proc / "self" / "cgroup").read_text()
    except OSError:
        return None
    v2_mount, v1_mount = _mounts(mountinfo)
    v2_path, v1_path = _own_paths(membership)
    if v2_mount and v2_path is not None:
        for folder in _upwards(v2_mount, v2_path):
            if "memory" in _words(folder / "cgroup.subtree_control") and may_use(folder):
                return Place(2, folder)
    if v1_mount and v1_path is not None:
        for folder in _upwards(v1_mount, v1_path):
            if may_use(folder):
                return Place(1, folder)
    return None


def _mounts(mountinfo: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(mount point, mount root) of the cgroup2 file system and of the v1 memory hierarchy."""
    v2 = v1 = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if len(fields) < dash + 4 or len(fields) < 5:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = (point, root)
        elif fstype == "cgroup" and "memory" in options and v1 is None:
            v1 = (point, root)
    return v2, v1


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def _own_paths(membership: str) -> tuple[str | None, str | None]:
    """krate's own cgroup: in the v2 hierarchy and in the v1 memory hierarchy."""
    v2 = v1 = None
    for line in membership.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _upwards(mount: tuple[str, str], own: str) -> list[Path]:
    """krate's cgroup folder and its ancestors up to the mount point, nearest first."""
    point, root = mount
    root = root.rstrip("/")
    if own != root and not own.startswith(root + "/"):
        return []  # krate's cgroup is not visible through this mount
    relative = own[len(root) :].strip("/")
    folder = Path(point, relative) if relative else Path(point)
    out = [folder]
    while folder != Path(point):
        folder = folder.parent
        out.append(folder)
    return out


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _may_use(folder: Path) -> bool:
    """krate may make a child here and move a process into it (a real write is the proof)."""
    return os.access(folder, os.W_OK | os.X_OK) and os.access(folder / "cgroup.procs", os.W_OK)


# ---------------------------------------------------------------- one run's cgroup


class RunCgroup:
    """A per-run child cgroup with a memory limit; `remove()` when the sandbox is gone."""

    def __init__(self, place: Place, name: str, limit_mb: int) -> None:
        self.place, self.limit_mb = place, limit_mb
        self.path = place.parent / name

    @classmethod
    def create(cls, place: Place, run_id: str, limit_mb: int) -> RunCgroup:
        """Make the cgroup and set its limits; OSError when the kernel refuses."""
        sweep(place)
        made = cls(place, f"{PREFIX}{os.getpid()}-{run_id}", limit_mb)
        made.path.mkdir(mode=0o755)
        try:
            size = str(limit_mb * MB)
            if place.version == 2:
                _write(made.path / "memory.max", size)
                _write_if_present(made.path / "memory.swap.max", "0")
            else:
                _write(made.path / "memory.limit_in_bytes", size)
                # memory + swap together: written after the memory limit (it must not be lower)
                _write_if_present(made.path / "memory.memsw.limit_in_bytes", size)
        except BaseException:
            made.remove(wait=0)
            raise
        return made

    def join(self) -> Callable[[], None]:
        """For the launcher's child (after fork, before exec): move itself into the cgroup."""
        procs = str(self.path / "cgroup.procs")

        def apply() -> None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)

        return apply

    def oom_kills(self) -> int:
        """How many processes the kernel killed for this cgroup's memory limit."""
        name = "memory.events" if self.place.version == 2 else "memory.oom_control"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self, wait: float = 2.0) -> bool:
        """Remove the cgroup once its processes are gone (they may take a moment to exit)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False  # the next run's sweep() removes it
                time.sleep(0.02)


def sweep(place: Place) -> None:
    """Remove per-run cgroups left by krate processes that are gone (empty ones only)."""
    from krate.sandbox.leftovers import alive

    try:
        entries = list(os.scandir(place.parent))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            pid = int(entry.name[len(PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not alive(pid, None):
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        _write(path, value)
