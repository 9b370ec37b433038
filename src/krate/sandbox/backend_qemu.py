"""The micro-VM backend (Linux): the workload in its own kernel, under QEMU's `microvm`.

A namespace sandbox shares the host's kernel, so a kernel bug reached from inside
is a way out; here the workload runs on a separate kernel (the distribution's,
vm_kernel.py) with krate's small guest (vm_initramfs.py), under an existing
hypervisor: QEMU from the distribution, never a home-made one.

What the run sees: the image root read-only with a throwaway tmpfs layer, the
workspace read-write at /work (both 9p shares, the read-only one enforced by
QEMU on the host), nothing else of the host. No network device at all without
network; with it, QEMU's user-mode network restricted to `guestfwd` rules that
relay each connection to krate's egress proxy socket (egress/guestfwd.py), which decides
and records it (qemu.py). Memory is the VM's RAM (`limits.memory_mb`, else
DEFAULT_MEMORY_MB); CPU time and processes are rlimits in the guest (run.sh).
Rules the VM cannot enforce refuse the run (125): a hidden or read-only path
inside the workspace (the share is the whole folder), limits.processes for a
workload running as the guest's root (root ignores RLIMIT_NPROC).

Which acceleration: KVM only after a bounded probe boot worked (vm_accel.py),
else emulation (TCG), with one line saying it is slow. The backend's recorded
name says which (`qemu-kvm`, `qemu-tcg`).

QEMU never outlives krate: it is started with PR_SET_PDEATHSIG = SIGKILL, set
after it changed to the workspace owner's ids (a change of ids clears it), and it
exits at once if krate was already gone. It runs inside bubblewrap
(qemu_confine.py: its own namespaces, the system read-only, the workspace, nothing
of the user's home) and under its own seccomp filter (`-sandbox on`).

The workload's exit status comes back on a virtio-serial port (`started`, then
`exit N`, 128+N for a signal); a guest that never reports `started` within the
boot bound is killed: 125 with the console's last lines. krate's stdin reaches
the workload through a pipe krate fills and a serial port (vm_stdin.py); when
it is a terminal, that port is the guest's console, the workload's terminal, and
the host's terminal is raw for the run (restored when QEMU ends, and again by
supervise.terminal_kept). Signals krate forwards reach the workload through the
control share (`signals`), and so does a new window size (`w ROWS COLS`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.sandbox import leftovers, qemu, vm_run, vm_stdin
from krate.sandbox.backend import GUESTFWD, Capabilities, Installed
from krate.sandbox.spec import is_within
from krate.sandbox.supervise import Launcher

if TYPE_CHECKING:
    from krate.sandbox.cgroup import Place
    from krate.sandbox.spec import SandboxSpec
    from krate.sandbox.supervise import Outcome

CAPABILITIES = Capabilities(
    memory="vm", kernel=False, run_as_owner=True, network=GUESTFWD, relay_threads=True,
    images=True,
)  # fmt: skip
DEFAULT_MEMORY_MB = 256
MIN_MEMORY_MB = 96
BOOT_S = {"kvm": 15.0, "tcg": 90.0}  # from launch to `started`
SLOW = "krate: no usable KVM here: the micro-VM is emulated (TCG), a few seconds per run\n"
PR_SET_PDEATHSIG = 1


class Qemu(Installed):
    """`krate run --vm`: the image root `rootfs` as the guest's /, run as `user`."""

    name = "qemu"
    CAPABILITIES = CAPABILITIES
    host_paths = False  # the command is looked up inside the guest: 127 comes from there

    def __init__(
        self,
        executable: str,
        rootfs: Path | None = None,
        *,
        user: vm_run.GuestUser | None = None,
        image_env: dict[str, str] | None = None,
        accel: str | None = None,
        quiet: bool = False,
    ) -> None:
        super().__init__(executable)
        self.rootfs, self.user = rootfs, user or vm_run.GuestUser()
        self.image_env, self.accel, self.quiet = image_env, accel, quiet
        self.ready: tuple[Path, Path, str] | None = None
        if accel is not None:
            self.name = f"qemu-{accel}"

    def visible(self, path: Path, spec: SandboxSpec) -> bool:
        return True  # not asked: host_paths is False (runs._check_command)

    def guest(self, data_dir: Path) -> tuple[Path, Path, str]:
        """(kernel, initramfs, accel): found, built or cached; KrateError 125 if missing."""
        from krate.sandbox import vm_accel, vm_initramfs, vm_kernel

        if self.ready is not None:
            return self.ready
        kernel = vm_kernel.find()
        if kernel is None:
            raise KrateError(
                f"cannot start a micro-VM: {vm_kernel.install_hint()}", exit_code=EXIT_KRATE_FAILED
            )
        busybox = vm_initramfs.find_busybox()
        if busybox is None:
            raise KrateError(
                f"cannot start a micro-VM: no static busybox; {vm_initramfs.BUSYBOX_HINT}",
                exit_code=EXIT_KRATE_FAILED,
            )
        cache = cache_dir(data_dir)
        image = vm_kernel.vmlinux(kernel, cache)
        initrd = vm_initramfs.build(kernel, busybox, cache)
        if self.accel is None:
            self.accel = vm_accel.choose(self.executable, image, initrd, cache)
            self.name = f"qemu-{self.accel}"
        self.ready = (image, initrd, self.accel)
        return self.ready

    @contextlib.contextmanager
    def open(
        self, spec: SandboxSpec, *, run_id: str, data_dir: Path, memory: Place | None = None
    ) -> Iterator[QemuLauncher]:
        """The launcher, with the run's control folder (run.sh, status, console)."""
        if spec.image is not None:  # `krate run --vm IMAGE`: its unpacked root, as its user
            self.rootfs = spec.image.rootfs
            self.user = vm_run.GuestUser(spec.image.uid, spec.image.gid)
        refusal = refuse(spec, self.rootfs, self.user)
        if refusal is not None:
            raise KrateError(refusal, exit_code=EXIT_KRATE_FAILED)
        kernel, initrd, accel = self.guest(data_dir)
        if accel == "tcg" and not self.quiet:
            with contextlib.suppress(OSError):
                os.write(2, SLOW.encode())
        with leftovers.run_folder(data_dir / leftovers.RUN_DIRS, run_id) as folder:
            control = folder / "in"
            control.mkdir(mode=0o700)
            env = vm_run.guest_env(spec.env, self.image_env, self.user)
            cwd = vm_run.guest_cwd(str(spec.cwd), str(spec.workspace))
            text = vm_run.script(
                spec.argv, env, cwd, self.user,
                cpu_seconds=spec.limits.cpu_seconds, processes=spec.limits.processes,
            )  # fmt: skip
            _private_write(control / "run.sh", text)
            if spec.network == "proxy":
                _private_write(control / "net", "")
            terminal = vm_stdin.terminal(0)
            if terminal:  # the guest's terminal: its size, and which of stdout/stderr use it
                rows, cols = vm_stdin.size(0)
                tty = f"{rows} {cols} {int(os.isatty(1))} {int(os.isatty(2))}\n"
                _private_write(control / "tty", tty)
            if spec.run_as is not None:  # QEMU runs as the workspace's owner
                for path in (folder, control, *control.iterdir()):
                    os.chown(path, spec.run_as.uid, spec.run_as.gid)
            assert self.rootfs is not None
            with QemuLauncher(
                spec, self.executable, kernel, initrd, self.rootfs, folder, accel, terminal
            ) as launcher:
                yield launcher


def cache_dir(data_dir: Path, euid: int | None = None) -> Path:
    """Derived, disposable: the extracted kernel, the initramfs, the KVM probe's answer.

    A root krate's is vm_kernel.SYSTEM_CACHE (QEMU may run as another user)."""
    from krate.sandbox.vm_kernel import SYSTEM_CACHE

    if (os.geteuid() if euid is None else euid) == 0:
        return SYSTEM_CACHE
    return data_dir / "cache" / "vm"


def refuse(spec: SandboxSpec, rootfs: Path | None, user: vm_run.GuestUser) -> str | None:
    """Why the VM cannot enforce this run's rules, or None."""
    if rootfs is None or not rootfs.is_dir():
        return f"the micro-VM needs an image root folder ({rootfs} is not one)"
    for path in spec.hidden:
        if is_within(path, spec.workspace):
            return (
                f"the policy hides {path} inside the workspace, which the micro-VM shares whole; "
                "move it out of the workspace or run without --vm"
            )
    for path in spec.read_only:
        if is_within(path, spec.workspace) and path != spec.workspace:
            return (
                f"the policy keeps {path} read-only inside the workspace, which the micro-VM "
                "shares whole and writable; run without --vm"
            )
    if spec.limits.processes is not None and user.uid == 0:
        return (
            "the policy sets limits.processes, which the micro-VM cannot enforce for a workload "
            "running as the guest's root (root ignores RLIMIT_NPROC); remove the limit"
        )
    if spec.limits.memory_mb is not None and spec.limits.memory_mb < MIN_MEMORY_MB:
        return (
            f"limits.memory_mb = {spec.limits.memory_mb} is below the {MIN_MEMORY_MB} MB a "
            "micro-VM needs to boot; raise it or run without --vm"
        )
    return None


def _private_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _output(fd: int, fds: list[int]) -> qemu.Output:
    """krate's stdout or stderr for QEMU (qemu.py), as a write-only fd set where possible:
    QEMU may run as another user, who could not open a root krate's terminal by path."""
    import fcntl
    import stat

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return qemu.Output(path=os.devnull)
    if flags & os.O_ACCMODE == os.O_WRONLY:
        copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    elif stat.S_ISREG(os.fstat(fd).st_mode):  # read-write file: QEMU reopens it by path
        return qemu.Output(path=f"/proc/self/fd/{fd}")
    else:  # a terminal (read-write): a write-only descriptor of it, opened by krate
        try:
            copy = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return qemu.Output(path=f"/proc/self/fd/{fd}")
    fds.append(copy)  # closed by the launcher once QEMU started
    return qemu.Output(fd=copy)


def _die_with_parent(
    run_as,
    parent: int,
    stdin: Callable[[], int] = lambda: -1,
    echo: Callable[[], int] = lambda: -1,
) -> Callable[[], None]:
    """In QEMU's child: descriptor 0 the stdin pipe's read end (`stdin()`, else /dev/null),
    1 the terminal's write-only copy (`echo()`: the guest's console writes there), else
    /dev/null (what the guest writes into its stdin port goes nowhere), the owner's ids,
    then PR_SET_PDEATHSIG."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def child() -> None:
        null = os.open(os.devnull, os.O_RDWR)
        source = stdin()
        os.dup2(source if source >= 0 else null, 0)
        out = echo()
        os.dup2(out if out >= 0 else null, 1)
        os.close(null)
        if run_as is not None:
            os.setgroups(list(run_as.groups))
            os.setresgid(run_as.gid, run_as.gid, run_as.gid)
            os.setresuid(run_as.uid, run_as.uid, run_as.uid)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # krate died before the line above
            os._exit(1)

    return child


class QemuLauncher(Launcher):
    """QEMU's process; the status port says whether and how the workload ended."""

    def __init__(
        self, spec: SandboxSpec, exe: str, kernel: Path, initrd: Path, rootfs: Path,
        folder: Path, accel: str, tty: bool = False,
    ) -> None:  # fmt: skip
        env = {"PATH": os.defpath, "LC_ALL": "C"}
        self.stdin: vm_stdin.Relay | None = None
        self.tty, self.echo, self.saved_mode = tty, -1, None
        preexec = _die_with_parent(spec.run_as, os.getpid(), self._stdin_reader, lambda: self.echo)
        super().__init__(
            env, preexec=preexec, wall_seconds=spec.limits.wall_seconds, terminal=False
        )  # fmt: skip
        self.spec, self.exe, self.accel = spec, exe, accel
        self.kernel, self.initrd, self.rootfs, self.folder = kernel, initrd, rootfs, folder
        self.boot_s = BOOT_S[accel]

    def _stdin_reader(self) -> int:
        return self.stdin.reader if self.stdin is not None else -1

    def _spawn(self) -> None:
        """QEMU with the stdin pipe's read end as its descriptor 0; then the relay (vm_stdin.py).

        On a terminal: QEMU's descriptor 1 is a write-only descriptor of it (opened anew, so
        QEMU's O_NONBLOCK never reaches the user's shell), and the terminal goes raw."""
        self.stdin = vm_stdin.Relay(escape=self._escape if self.tty else None)
        try:
            if self.tty:
                self.echo = os.open("/proc/self/fd/0", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            super()._spawn()
        except BaseException:
            self.stdin.abandon()
            raise
        finally:
            if self.echo >= 0:
                os.close(self.echo)
                self.echo = -1
        if self.tty:
            import termios

            with contextlib.suppress(termios.error, OSError):
                self.saved_mode = termios.tcgetattr(0)
                vm_stdin.raw(0)
        self.stdin.start()

    def _escape(self) -> None:
        """Three Ctrl-] from the raw terminal (the relay's thread): kill the VM."""
        self.restore_terminal()
        with contextlib.suppress(OSError):
            os.write(2, b"\r\nkrate: Ctrl-] three times: the micro-VM is killed\r\n")
        self._kill_early(signal.SIGINT)

    def restore_terminal(self) -> None:
        """The terminal's modes as before the run (supervise.terminal_kept does it again)."""
        saved, self.saved_mode = self.saved_mode, None
        if saved is not None:
            import termios

            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(0, termios.TCSANOW, saved)

    def close(self) -> None:
        self.restore_terminal()
        super().close()

    def plan(self, fds: list[int]) -> qemu.Plan:
        def fd_path(path: Path, flags: int) -> str:
            fd = os.open(path, flags | os.O_CLOEXEC)
            fds.append(fd)
            return f"/proc/self/fd/{fd}"

        # By descriptor: a QEMU running as the workspace owner cannot walk root's folders.
        folder = fd_path(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        stdout, stderr = _output(1, fds), _output(2, fds)
        forwards: tuple[tuple[int, str], ...] = ()
        socket = self._proxy_socket()
        if socket is not None:
            import krate.egress  # loaded already: the run's proxy is up

            script = Path(krate.egress.__file__).with_name("guestfwd.py")  # never imported here
            relay = qemu.relay_command(_python(), str(script), str(socket))
            ports = sorted({int(p) for p in _proxy_ports(self.spec.env)})
            forwards = tuple((port, relay) for port in ports)
        memory = self.spec.limits.memory_mb or DEFAULT_MEMORY_MB
        return qemu.Plan(
            qemu=self.exe,
            kernel=fd_path(self.kernel, os.O_RDONLY),
            initrd=fd_path(self.initrd, os.O_RDONLY),
            control=f"{folder}/in",
            root=fd_path(self.rootfs, os.O_RDONLY | os.O_DIRECTORY),
            workspace=str(self.spec.workspace),
            status=f"{folder}/status",
            console=f"{folder}/console",
            stdout=stdout,
            stderr=stderr,
            memory_mb=memory,
            accel=self.accel,
            tsc_khz=qemu.tsc_khz(),
            forwards=forwards,
            machine=platform.machine(),
            stdin=True,
            terminal=self.tty,
        )

    def command(self, fds: list[int]) -> list[str]:
        import shutil

        from krate.sandbox import qemu_confine

        plan = self.plan(fds)
        argv = qemu.command(plan)
        bwrap = shutil.which("bwrap", path=os.defpath + ":/usr/local/bin")
        if bwrap is None:  # krate's Linux sandbox: always there where krate runs
            return argv
        extra: tuple[Path, ...] = ()
        socket = self._proxy_socket()
        if socket is not None:
            import krate.egress

            extra = (Path(krate.egress.__file__).parent, socket.parent)
        return qemu_confine.wrap(
            bwrap, argv, workspace=self.spec.workspace, kvm=plan.accel == "kvm", read_only=extra
        )

    def _proxy_socket(self) -> Path | None:
        if self.spec.network != "proxy":
            return None
        for bind in self.spec.extra_binds:
            if bind.source.name == "proxy.sock":
                return bind.source
        raise KrateError(
            "the micro-VM found no egress proxy socket for the run", exit_code=EXIT_KRATE_FAILED
        )

    # ------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: object) -> None:
        """Once the workload runs, a forwarded signal goes to it inside the guest (the init
        reads the control share's `signals`); before that, it ends the VM (supervise.py)."""
        if self.proc is None or "started" not in self.said():
            super()._on_signal(signum, frame)
            return
        self.forwarded.append(signum)
        if signum == signal.SIGINT and self._insists():
            self._kill_early(signum)
        elif signum == getattr(signal, "SIGWINCH", -1):  # the guest's terminal, if any
            if self.tty:
                rows, cols = vm_stdin.size(0)
                self._tell_guest(f"w {int(rows)} {int(cols)}")
        else:
            self.signal_workload(signum)

    def signal_workload(self, signum: int) -> None:
        self._tell_guest(str(int(signum)))

    def _tell_guest(self, line: str) -> None:
        """A line to the guest's watcher: a signal number, or `w ROWS COLS` (a new size)."""
        path = self.folder / "in" / "signals"
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # numbers only
            try:
                os.write(fd, f"{line}\n".encode())
            finally:
                os.close(fd)

    # ------------------------------------------------ the status port

    def said(self) -> list[str]:
        try:
            return (self.folder / "status").read_text(errors="replace").splitlines()
        except OSError:
            return []

    def console_tail(self, lines: int = 5) -> str:
        try:
            text = (self.folder / "console").read_text(errors="replace")
        except OSError:
            return ""
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail)

    def exit_code(self, returncode: int) -> int | None:
        for line in self.said():
            if line.startswith("exit "):
                with contextlib.suppress(ValueError):
                    return int(line[5:])
        return None

    def not_started(self, outcome: Outcome, returncode: int) -> None:
        said = self.said()
        outcome.exit_code, outcome.status = EXIT_KRATE_FAILED, "failed"
        failed = [line[5:] for line in said if line.startswith("fail ")]
        console = self.console_tail()
        if failed:
            outcome.reason = f"the micro-VM's init failed: {failed[0]}"
        elif "started" in said:
            # QEMU ended while the workload ran (killed, or the guest crashed)
            # A forwarded signal ends QEMU itself (it is not passed into the guest).
            outcome.status = "interrupted"
            signum = -returncode if returncode < 0 else (self.forwarded or [0])[-1]
            outcome.exit_code = 128 + signum if signum else EXIT_KRATE_FAILED
            outcome.reason = f"the micro-VM stopped before the workload exited (QEMU {returncode})"
        elif self.timed_boot:
            outcome.reason = (
                f"the micro-VM did not boot within {self.boot_s:.0f} s ({self.accel}); "
                f"console: {console or 'nothing'}"
            )
        else:
            outcome.reason = (
                f"the micro-VM stopped before it started the workload (QEMU exit {returncode}); "
                f"console: {console or 'nothing'}"
            )

    timed_boot = False

    def wait(self) -> Outcome:
        """Bounded boot: `started` must come within boot_s, else QEMU is killed (125)."""
        assert self.proc is not None, "release() first"
        deadline = time.monotonic() + self.boot_s
        delay = 0.01
        while self.proc.poll() is None and "started" not in self.said():
            if time.monotonic() > deadline:
                self.timed_boot = True
                self.kill_tree()
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            return super().wait()
        finally:
            self.restore_terminal()


def _proxy_ports(env) -> list[int]:
    """The ports in the run's proxy variables (egress sets them to the guest's proxy address)."""
    ports = []
    for name in ("HTTP_PROXY", "ALL_PROXY"):
        value = env.get(name, "")
        _, _, port = value.rpartition(":")
        if port.isdigit():
            ports.append(int(port))
    return ports


def _python() -> str:
    import sys

    return os.path.realpath(sys.executable)
