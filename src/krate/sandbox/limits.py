"""`[limits]` as rlimits and a cgroup: CPU seconds and memory, processes inside the sandbox.

CPU and memory are per-process rlimits set in the launcher just before bubblewrap
starts, inherited by everything in the sandbox. With bubblewrap, memory is also,
and above all, a cgroup for the whole sandbox (cgroup.py): an rlimit counts neither
tmpfs files nor shared mappings, so without a cgroup the run is refused. The
process limit must be set *inside* the sandbox's user namespace (RLIMIT_NPROC counts per user and
namespace: set outside, it would count every process the user already runs), so
the workload is started through util-linux `prlimit`. The wall-clock limit is
the supervisor's (supervise.py). Never raises a limit, only lowers it.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable, Iterator

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.sandbox.detect import which as find_executable
from krate.sandbox.spec import Limits

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.sandbox.cgroup import Place, RunCgroup
    from krate.sandbox.supervise import Outcome

MB = 1024 * 1024


def rlimit_pairs(limits: Limits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for CPU and memory; the CPU hard limit a second later (SIGKILL)."""
    pairs = []
    if limits.cpu_seconds is not None:
        pairs.append((resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1))
    if limits.memory_mb is not None:
        size = limits.memory_mb * MB
        pairs.append((resource.RLIMIT_DATA, size, size))
    return pairs


def preexec(limits: Limits) -> Callable[[], None] | None:
    """A function for the launcher child (after fork, before exec); None: nothing to set."""
    pairs = rlimit_pairs(limits)
    if not pairs:
        return None

    def apply() -> None:
        for which, soft, hard in pairs:
            old_soft, old_hard = resource.getrlimit(which)
            if old_hard != resource.RLIM_INFINITY:
                hard = min(hard, old_hard)
                soft = min(soft, hard)
            resource.setrlimit(which, (soft, hard))

    return apply


def wrap_argv(limits: Limits, argv: list[str], path: str | None = None) -> list[str]:
    """argv started through `prlimit --nproc` when a process limit is set."""
    if limits.processes is None:
        return argv
    exe = find_executable("prlimit", path or "/usr/bin:/bin:/usr/sbin:/sbin")
    if exe is None:
        raise KrateError(
            "the policy sets limits.processes but `prlimit` (util-linux) is not installed; "
            "install util-linux or remove the limit",
            exit_code=EXIT_KRATE_FAILED,
        )
    n = limits.processes
    return [exe, f"--nproc={n}:{n}", "--", *argv]


@contextlib.contextmanager
def memory_cgroup(place: Place, run_id: str, limit_mb: int) -> Iterator[RunCgroup]:
    """The run's own cgroup of `limit_mb`, removed afterwards.

    The launcher's child joins it (`joined`) before it executes the sandbox, so
    nothing of the workload runs outside it.
    """
    from krate.sandbox import cgroup

    try:
        group = cgroup.RunCgroup.create(place, run_id, limit_mb)
    except OSError as exc:
        raise KrateError(
            f"cannot make the memory cgroup for limits.memory_mb in {place.parent}: "
            f"{exc.strerror or exc}; remove limits.memory_mb or see `krate doctor`",
            exit_code=EXIT_KRATE_FAILED,
        ) from exc
    try:
        yield group
    finally:
        group.remove()


def joined(group: RunCgroup, preexec: Callable[[], None] | None) -> Callable[[], None]:
    """The launcher child's work: join `group`, then `preexec`."""
    join = group.join()

    def both() -> None:
        join()
        if preexec is not None:
            preexec()

    return both


def note_oom(group: RunCgroup, outcome: Outcome) -> None:
    """When the kernel killed processes for the limit, the outcome's reason says so."""
    kills = group.oom_kills()
    if kills:
        said = f"; {outcome.reason}" if outcome.reason else ""
        outcome.reason = (
            f"memory limit of {group.limit_mb} MB reached: the kernel killed {kills} "
            f"process{'es' if kills != 1 else ''} in the sandbox{said}"
        )
