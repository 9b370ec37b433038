"""The sandbox backend of a run: chosen once, asked what it can enforce, started held.

A run asks its backend instead of asking which platform it is on. `choose()`
picks the one this machine has (bubblewrap on Linux, Seatbelt on macOS) or refuses
the run with 125; `--vm` picks the micro-VM backend instead (sandbox/vm.py). A backend says what
it enforces (`capabilities()`), which paths its workload can see (the 126/127
checks), and `open()`s a launcher for one run: a context manager whose
`start(gate)`, `release()` and `wait()` are steps 2, 4 and 6 of the launch
sequence in runs.py (the launcher is supervise.Launcher or a subclass).

Kept free of imports beyond the standard library (not even typing): it is on the run path.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from pathlib import Path

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Protocol

    from krate.sandbox.cgroup import Place
    from krate.sandbox.spec import SandboxSpec
    from krate.sandbox.supervise import Launcher

# How the workload's network reaches the egress proxy (Capabilities.network).
BRIDGE = "bridge"  # the proxy's unix socket is mounted in; the bridge inside can hold the workload
LOOPBACK = "loopback"  # the proxy listens on a host loopback TCP port; nothing holds the workload
# The proxy's unix socket, reached by the hypervisor's port forward (micro-VM: QEMU's guestfwd);
# nothing holds the workload, whose proxy variables name the guest-side address.
GUESTFWD = "guestfwd"


class Capabilities(NamedTuple):
    """What a backend enforces, asked by the run instead of the platform.

    memory: "cgroup", one hard limit for the whole sandbox that counts tmpfs files and
        shared memory (a run whose limit has no delegated cgroup is refused); "rlimit",
        RLIMIT_DATA per process only (Seatbelt: documented in docs/run.md); "vm", the
        micro-VM's RAM (backend_qemu.py).
    kernel: a seccomp filter and a fresh session keyring, and /proc's key lists hidden;
        recorded as `layout.kernel` in run.started.
    run_as_owner: a root krate can run the workload as the workspace's owner (otherwise
        a root run without --as-root is refused).
    network: BRIDGE, LOOPBACK or GUESTFWD, how the workload reaches the egress proxy.
    relay_threads: the egress proxy may relay tunnels in two blocking threads.
    images: runs an OCI image's root filesystem instead of the host's (`krate run IMAGE`).
    mounts: a host folder can be mounted at another path (the package caches and settings
        at their usual paths, sandbox/pkgcache.py); otherwise the tools' variables name them.
    """

    memory: str
    kernel: bool
    run_as_owner: bool
    network: str
    relay_threads: bool
    images: bool = False
    mounts: bool = False


# The run's view of a backend and of its hold, for type checkers only: typing costs
# ~2 ms to import, and the run path does not load it (tests/test_run_fastpath.py).
if TYPE_CHECKING:

    class Gate(Protocol):
        """What holds a started workload until the run is recorded (egress's bridge)."""

        def release(self, go: bool = True) -> None: ...

        def unstarted(self, status: int) -> tuple[int, str] | None:
            """Once the sandbox exited with `status`: None if the workload was started,
            else the run's exit code and the reason it never started."""
            ...

    class Backend(Protocol):
        name: str  # recorded as run.started's `backend`
        executable: str

        def capabilities(self) -> Capabilities: ...

        def visible(self, path: Path, spec: SandboxSpec) -> bool:
            """Whether the workload can see `path` (resolved): for the 126/127 checks."""
            ...

        def open(
            self, spec: SandboxSpec, *, run_id: str, data_dir: Path, memory: Place | None = None
        ) -> AbstractContextManager[Launcher]:
            """The launcher for one run of `spec`, with what the backend needs around it."""
            ...


class Installed:
    """What every backend shares: its executable and its declared capabilities."""

    name: str
    CAPABILITIES: Capabilities

    def __init__(self, executable: str) -> None:
        self.executable = executable

    def capabilities(self) -> Capabilities:
        return self.CAPABILITIES


def choose(path: str | None = None, platform: str = sys.platform) -> Backend:
    """This machine's backend; KrateError 125 when it is not installed."""
    from krate.sandbox import detect

    found = detect.detect(path=path, platform=platform)
    if not found.available or found.executable is None:
        raise KrateError(
            f"the {found.backend} sandbox is not available: {found.install_hint}",
            exit_code=EXIT_KRATE_FAILED,
        )
    return named(found.backend, found.executable)


def named(name: str, executable: str) -> Backend:
    """The backend called `name` (as detect() and run records call it)."""
    if name == "bubblewrap":
        from krate.sandbox.backend_bwrap import Bubblewrap

        return Bubblewrap(executable)
    if name == "seatbelt":
        from krate.sandbox.backend_seatbelt import Seatbelt

        return Seatbelt(executable)
    if name.startswith("qemu"):  # recorded as qemu-kvm or qemu-tcg
        from krate.sandbox.backend_qemu import Qemu

        return Qemu(executable)
    raise ValueError(f"no sandbox backend called {name}")
