"""The bubblewrap backend (Linux): bwrap.py's command, started and watched.

Whether the workload actually started is read from bubblewrap's
`--json-status-fd`: it reports `exit-code` only when the sandbox was set up and
the command ran, so a sandbox that failed to start is exit 125, never confused
with the workload's own exit 1. bubblewrap runs in its own process group so a
terminal's Ctrl-C reaches krate only, which forwards it to the sandbox's init:
the workload sees one SIGINT, and bubblewrap is not killed before the workload
can clean up.

Behind the egress bridge, bubblewrap's `exit-code` is the bridge's: whether the
workload ran is the bridge's acknowledgement (the gate's `unstarted()`), so a
bridge that died before it (exit 1 with a traceback, a signal) is 125, with its
reason, and never passed off as the workload's status.

Holding: behind the egress bridge the sandbox starts at once and the bridge holds
the workload until the run is recorded. Without network the shell hold does
(sandbox/hold.py) where it leaves the workload's start unchanged; otherwise the
sandbox starts only on release. bubblewrap's own `--block-fd` is not used for
either: it proceeds when the descriptor reaches end of file, which is also what a
SIGKILLed krate's closed pipe looks like, so a killed krate could let a workload run
unrecorded; the bridge and the shell run the workload only on an explicit go-ahead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.sandbox import bwrap, limits, placeholders
from krate.sandbox.backend import BRIDGE, Capabilities, Installed
from krate.sandbox.hold import ShellHold, usable
from krate.sandbox.supervise import Launcher, Outcome

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.helper_process import QuickThread
    from krate.sandbox.backend import Gate
    from krate.sandbox.cgroup import Place, RunCgroup
    from krate.sandbox.spec import SandboxSpec

CAPABILITIES = Capabilities(
    memory="cgroup",
    kernel=True,
    run_as_owner=True,
    network=BRIDGE,
    relay_threads=True,
    images=True,
    mounts=True,
)
SETTLE_S = 2.0


class Bubblewrap(Installed):
    name = "bubblewrap"
    CAPABILITIES = CAPABILITIES

    def visible(self, path: Path, spec: SandboxSpec) -> bool:
        return bwrap.visible_inside(path, spec)

    @contextlib.contextmanager
    def open(
        self, spec: SandboxSpec, *, run_id: str, data_dir: Path, memory: Place | None = None
    ) -> Iterator[BwrapLauncher]:
        """The launcher, in a fresh session keyring, with the placeholders bubblewrap mounts
        over made for the run and, for limits.memory_mb, in the run's own memory cgroup."""
        from krate.sandbox import keyrings

        spec = spec._replace(argv=tuple(limits.wrap_argv(spec.limits, list(spec.argv))))
        preexec = limits.preexec(spec.limits)
        keyrings.join_new_session()  # the caller's session keyring stays outside
        with placeholders.held(spec.pins, data_dir) as absent, contextlib.ExitStack() as stack:
            if absent:
                spec = spec._replace(read_only=tuple(p for p in spec.read_only if p not in absent))
            group = None
            if spec.image is not None and spec.run_as is not None:
                from krate.sandbox import image_stage

                stage, enter = stack.enter_context(image_stage.staged(spec.image.rootfs))
                spec = spec._replace(image=spec.image._replace(stage=stage))
                preexec = image_stage.then(enter, preexec)
            if memory is not None and spec.limits.memory_mb is not None:
                group = stack.enter_context(
                    limits.memory_cgroup(memory, run_id, spec.limits.memory_mb)
                )
                preexec = limits.joined(group, preexec)
            with BwrapLauncher(spec, self.executable, preexec, group) as launcher:
                yield launcher


class BwrapLauncher(Launcher):
    """bubblewrap's process: its JSON status names the sandbox's init and the workload's exit.

    With the terminal kept (supervise.py), bubblewrap shares the terminal's foreground
    group with the workload: it ignores Ctrl-C and Ctrl-\\ (it would die of them and
    take the sandbox along), and the workload gets them back (bwrap.command).
    """

    CHILD_IGNORES = (signal.SIGINT, signal.SIGQUIT)

    def __init__(
        self, spec: SandboxSpec, exe: str, preexec: Callable[[], None] | None,
        group: RunCgroup | None = None,
    ) -> None:  # fmt: skip
        env = dict(spec.env)
        if spec.image is not None:
            from krate.sandbox.bwrap_image import HOST_ENV

            env = dict(HOST_ENV)  # bubblewrap sets the workload's (bwrap_image._environment)
        super().__init__(
            env, preexec=preexec, wall_seconds=spec.limits.wall_seconds, run_as=spec.run_as
        )
        if self.terminal and (bwrap.terminal_defence() is None or spec.image is not None):
            # a new session: no terminal to inject into (an image may lack GNU env, which
            # gives the workload back the signals bubblewrap ignores in the terminal's group)
            self.terminal = False
        self.spec, self.exe, self.group = spec, exe, group
        self.status: _Status | None = None
        self.preparing: QuickThread | None = None
        self.hold: ShellHold | None = None  # the launcher's own gate, without the bridge
        # The host's root only: an image's /bin/sh is the image's.
        self.holdable = spec.image is None and usable(
            spec.env, spec.argv, lambda p: bwrap.visible_inside(Path(p), spec)
        )

    def command(self, fds: list[int]) -> list[str]:
        read_fd, write_fd = os.pipe()
        self.status = _Status(read_fd)
        fds.append(write_fd)
        hold: list[str] = []
        if self.hold is not None:
            hold = self.hold.argv()
            fds.extend(self.hold.take_fds())
        return bwrap.command(
            self.spec, self.exe, status_fd=write_fd, fds=fds, terminal=self.terminal, hold=hold
        )

    def _spawn(self) -> None:
        try:
            super()._spawn()
        except Exception as exc:
            import subprocess

            if self.group is None or not isinstance(exc, subprocess.SubprocessError):
                raise
            # the child could not join the memory cgroup: it never ran
            raise KrateError(
                f"cannot put the sandbox into its memory cgroup {self.group.path}; "
                "remove limits.memory_mb or see `krate doctor`",
                exit_code=EXIT_KRATE_FAILED,
            ) from exc

    def init_pid(self) -> int | None:
        return self.status.child_pid() if self.status is not None else None

    def signal_workload(self, signum: int) -> None:
        # The init's children: the workload (or the egress bridge, which passes it on).
        init = self.init_pid()
        if init is None:
            return
        try:
            with open(f"/proc/{init}/task/{init}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            return
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    def kill_tree(self) -> None:
        init = self.init_pid()
        if init:
            with contextlib.suppress(OSError):
                os.kill(init, signal.SIGKILL)
        # bubblewrap's whole group: a setup child that has not reported its pid yet would
        # otherwise wait forever for its killed parent.
        super().kill_tree()

    def settle(self) -> None:
        # Killed before it names its init, bubblewrap can leave that init behind (and the
        # caller's pipes open): wait briefly for the name.
        deadline = time.monotonic() + SETTLE_S
        while self.init_pid() is None and self.proc is not None and self.proc.poll() is None:
            if time.monotonic() > deadline:
                break
            if self.status is None:
                time.sleep(0.002)
            else:  # woken by bubblewrap's status line (the sandbox's set-up waits for it)
                select.select([self.status.fd], [], [], 0.002)

    def start(self, gate: Gate | None = None) -> None:
        """Behind a gate that sets the sandbox up from outside (the bridge's DNS needs its
        low ports, egress/netns.py), that set-up runs in a thread while the run is
        recorded: it waits for bubblewrap to name the init, then does it.

        Without a gate, the shell hold (sandbox/hold.py) is the gate where it can be."""
        if gate is None and self.holdable:
            gate = self.hold = ShellHold.make()
        super().start(gate)
        if getattr(gate, "before_go", None) is not None and self.proc is not None:
            from krate.helper_process import QuickThread

            def prepare() -> None:
                try:
                    self.settle()
                    gate.prepare(self.init_pid())
                except Exception as exc:  # a QuickThread must not raise: what failed is kept
                    gate.setup_error = f"{type(exc).__name__}: {exc}"

            # (not threading.Thread: its start waits until the thread runs, helper_process.py)
            self.preparing = QuickThread(prepare).start()

    def _prepared(self) -> None:
        if self.preparing is not None:
            self.preparing.join()
            self.preparing = None

    def release(self) -> None:
        self._prepared()  # done before the go-ahead, always
        super().release()

    def abort(self) -> None:
        self._prepared()  # (it reads bubblewrap's status too)
        super().abort()

    def exit_code(self, returncode: int) -> int | None:
        code = self.status.exit_code() if self.status is not None else None
        if code is not None and self.gate is not None and self.gate.unstarted(code):
            return None  # the bridge exited without starting the workload: its status is not one
        return code

    def not_started(self, outcome: Outcome, returncode: int) -> None:
        code = self.status.exit_code() if self.status is not None else None
        unstarted = None if code is None or self.gate is None else self.gate.unstarted(code)
        if unstarted is not None:
            outcome.status = "failed"
            outcome.exit_code, outcome.reason = unstarted
        elif returncode < 0:
            outcome.exit_code, outcome.status = 128 - returncode, "interrupted"
            outcome.reason = f"bubblewrap was killed by {signal.Signals(-returncode).name}"
        else:
            outcome.exit_code, outcome.status = EXIT_KRATE_FAILED, "failed"
            outcome.reason = f"the sandbox failed to start (bubblewrap exit {returncode})"

    def wait(self) -> Outcome:
        outcome = super().wait()
        if self.group is not None:
            limits.note_oom(self.group, outcome)
        return outcome

    def close(self) -> None:
        if self.hold is not None:
            self.hold.close()
        if self.status is not None:
            os.close(self.status.fd)
            self.status = None


class _Status:
    """bubblewrap's JSON status stream: the sandbox's init pid, and whether the command ran."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def poll(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # BlockingIOError, InterruptedError included
                return
            if not chunk:
                return
            self.buffer += chunk

    def documents(self) -> list[dict]:
        self.poll()
        out = []
        for line in self.buffer.decode(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def child_pid(self) -> int | None:
        for doc in self.documents():
            if "child-pid" in doc:
                return int(doc["child-pid"])
        return None

    def exit_code(self) -> int | None:
        for doc in self.documents():
            if "exit-code" in doc:
                return int(doc["exit-code"])
        return None
