"""doctor's sandbox test: `echo` in the real backend, startable before the lockdown.

Kept apart from doctor.py because cli/main.py imports it before `krate doctor`
locks itself down, when only krate and the standard library may load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from krate.handoff import Handoff

TRIAL_MARKER = "krate-doctor-sandbox-ok"
TRIAL_TIMEOUT_S = 20


class Trial:
    """`echo` in the real backend with an empty workspace, started now, judged by `result()`.

    `krate doctor` starts it at entry, before its own network lockdown (cli/main.py,
    `start_early`): on macOS that lockdown is itself a Seatbelt profile, and macOS
    refuses a sandbox inside a sandbox (`forbidden-sandbox-reinit`), so a test
    command started after it would always fail there. Only krate and the standard
    library run before the lockdown; the child is the sandbox and a shell in it.
    """

    def __init__(self, backend: str, executable: str) -> None:
        from krate.sandbox import spec as spec_mod

        self.backend, self.executable = backend, executable
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None
        self.scratch = tempfile.TemporaryDirectory(prefix="krate-doctor-")
        workspace = Path(self.scratch.name) / "workspace"
        workspace.mkdir()
        spec = spec_mod.build(
            argv=["/bin/sh", "-c", f"echo {TRIAL_MARKER}"],
            cwd=workspace,
            workspace=workspace,
            allow_write=[],
            read_only=[],
            deny_read=[],
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        )
        fds: list[int] = []
        try:
            if backend == "bubblewrap":
                from krate.sandbox import bwrap

                argv = bwrap.command(spec, executable, fds=fds)
            else:
                from krate.sandbox import seatbelt

                tmp = Path(self.scratch.name) / "tmp"
                tmp.mkdir(mode=0o700)
                argv = seatbelt.command(seatbelt.with_tmpdir(spec, tmp), executable)
            self.proc = subprocess.Popen(
                argv,
                env=dict(spec.env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                pass_fds=fds,
                cwd=workspace,
            )
        except (OSError, ValueError) as exc:
            self.error = getattr(exc, "strerror", None) or str(exc)
        finally:
            for fd in fds:
                os.close(fd)

    def result(self) -> str | None:
        """None when the test command ran in the sandbox; else why not (one line)."""
        try:
            if self.proc is None:
                return self.error or "it did not start"
            try:
                out, err = self.proc.communicate(timeout=TRIAL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
                return f"no answer within {TRIAL_TIMEOUT_S} s"
        finally:
            self.scratch.cleanup()
        if self.proc.returncode == 0 and TRIAL_MARKER in out:
            return None
        said = err.strip().splitlines()
        return said[-1][:200] if said else f"exit status {self.proc.returncode}"


_early: Handoff[Trial] = Handoff()  # started by cli/main.py before the lockdown


def start_early(path_env: str | None, platform: str = sys.platform) -> None:
    """Start the sandbox test now, before `krate doctor` locks itself down; never raises."""
    from krate.sandbox.detect import detect

    try:
        found = detect(path=path_env, platform=platform)
        if found.available and found.executable is not None:
            _early.put(Trial(found.backend, found.executable))
    except Exception:  # the check then starts its own and reports what fails
        _early.put(None)


def take_early() -> Trial | None:
    """The test started at entry (once), or None (the in-process entry, --help)."""
    return _early.take()


def _trial(backend: str, executable: str, early: Trial | None = None) -> str | None:
    """Run `echo` in the real backend with an empty workspace; None when it worked."""
    if early is None or (early.backend, early.executable) != (backend, executable):
        if early is not None:
            early.result()  # not this backend's: wait for it and clean up
        early = Trial(backend, executable)
    return early.result()
