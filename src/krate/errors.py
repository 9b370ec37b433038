"""One exception hierarchy for everything a user can cause.

The CLI boundary turns these into a one-line `krate: ...` message and the exit
code below; anything else is a bug and shows a traceback only with KRATE_DEBUG=1.
"""

from __future__ import annotations

# Exit codes from DESIGN.md.
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_KRATE_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


def how_it_ended(status: int) -> str:
    """`exited N`, or `was killed by SIGX` for a shell-style status of 128+N: the words for
    a process that stood before the workload (the shell hold, the egress bridge)."""
    if status <= 128:
        return f"exited {status}"
    import signal

    try:
        return f"was killed by {signal.Signals(status - 128).name}"
    except ValueError:
        return f"was killed by signal {status - 128}"


class KrateError(Exception):
    """A problem the user can act on; `str()` is the whole message."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(KrateError):
    """The command line itself is wrong."""

    exit_code = EXIT_USAGE


class StoreError(KrateError):
    """The data folder or database cannot be used as it is."""


class NotFound(KrateError):
    """A record the user named does not exist."""
