"""QEMU's command line for one micro-VM run: pure, so every flag is unit-tested.

The machine is QEMU's `microvm` (no PCI, no firmware, virtio over MMIO): the
kernel boots directly (PVH), the initramfs is krate's guest (vm_initramfs.py).
`tsc_early_khz` is given because about 1 boot in 8 hung at TSC calibration
without it under emulation (../shared/research/images-and-microvms.md).

Shares (9p, `security_model=none`: files keep the QEMU user's ownership on the host):
    krate  the run's control folder (run.sh), read-only
    root   the image root, read-only on the host (`readonly=on`: the guest gets
           EROFS even if it mounts it read-write), a tmpfs overlay in the guest
    ws     the workspace, read-write, at /work

Input: the workload's stdin is a virtio-serial port backed by `-chardev stdio`, i.e.
QEMU's own descriptor 0, which krate makes a private pipe it fills (vm_stdin.py):
that chardev reads only while the guest can take bytes and reports end of file
only after the last of them. When krate's stdin is a terminal that port is a
virtio console instead (`virtconsole`): the guest's /dev/hvc0, a real terminal
whose echo and output QEMU writes to its descriptor 1, a write-only descriptor of
krate's terminal (vm_stdin.py).

Output: the workload's stdout and stderr are virtio-serial ports backed by krate's
own descriptors 1 and 2, handed to QEMU as fd sets (`-add-fd`): a file krate's
caller redirected to keeps one shared offset, so QEMU's writes and the caller's
never overwrite each other. A descriptor opened read-write (a terminal) cannot be
an fd set for QEMU's write-only chardev: it is reopened by its /proc path (a
terminal or pipe has no offset to share). The status port is a file in the run
folder; the serial console (kernel messages, init errors) another, whose last
lines explain a boot that failed.

Network: none at all (no `-netdev`) unless the run has a proxy; then user-mode
networking with `restrict=on` (the guest reaches nothing on the host or beyond)
and `guestfwd` rules that run `relay` per connection: the egress proxy's Unix
socket is the only way out. `-sandbox on` (QEMU's own seccomp filter) denies
obsolete system calls and resource control to QEMU itself, and process creation and
privilege changes too when there is no network (guestfwd's `cmd:` forks and calls setsid).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import NamedTuple

MACHINE = {"x86_64": "microvm,x-option-roms=off", "aarch64": "virt"}
EXECUTABLE = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
PACKAGE = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}
CONSOLE = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}
GUEST_PROXY = "10.0.2.100"  # where the guest's proxy variables point
P9_MSIZE = 262144


class Output(NamedTuple):
    """Where one of the workload's streams goes: an fd set (`fd` >= 3) or a path."""

    fd: int | None = None
    path: str | None = None


class Plan(NamedTuple):
    qemu: str
    kernel: str
    initrd: str
    control: str  # the run's control folder (share `krate`)
    root: str  # the image root (share `root`, read-only)
    workspace: str  # share `ws`, read-write
    status: str  # file: the status port's output
    console: str  # file: the serial console's output
    stdout: Output
    stderr: Output
    memory_mb: int = 256
    cpus: int = 1
    accel: str = "tcg"
    tsc_khz: int | None = None
    # (guest port, relay command) per guestfwd rule; empty: no network device at all
    forwards: tuple[tuple[int, str], ...] = ()
    machine: str = "x86_64"
    stdin: bool = False  # the `krate.stdin` port, read from QEMU's descriptor 0
    terminal: bool = False  # that port a console (the guest's /dev/hvc0), echoing to QEMU's fd 1


def command(plan: Plan) -> list[str]:
    """The argv for `plan`."""
    append = [
        f"console={CONSOLE[plan.machine]}", "reboot=t", "panic=-1", "quiet", "loglevel=1",
        "i8042.noaux", "i8042.nokbd", "i8042.nopnp", "i8042.dumbkbd", "rdinit=/init",
    ]  # fmt: skip
    if plan.tsc_khz:
        append.append(f"tsc_early_khz={plan.tsc_khz}")
    argv = [
        plan.qemu,
        "-M", MACHINE[plan.machine],
        "-accel", plan.accel,
        *_cpu(plan),
        "-m", str(plan.memory_mb),
        "-smp", str(plan.cpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-chardev", f"file,id=console,path={_opt(plan.console)}",
        "-serial", "chardev:console",
        "-kernel", plan.kernel,
        "-initrd", plan.initrd,
        "-append", " ".join(append),
    ]  # fmt: skip
    argv += _share("krate", plan.control, readonly=True)
    argv += _share("root", plan.root, readonly=True)
    argv += _share("ws", plan.workspace, readonly=False)
    argv += ["-device", "virtio-serial-device"]
    argv += _port("status", "krate.status", Output(path=plan.status))
    if plan.stdin:
        argv += [
            "-chardev", "stdio,id=stdin,signal=off",
            "-device", f"{'virtconsole' if plan.terminal else 'virtserialport'},"
            "chardev=stdin,name=krate.stdin",
        ]  # fmt: skip
    argv += _port("stdout", "krate.stdout", plan.stdout)
    argv += _port("stderr", "krate.stderr", plan.stderr)
    if plan.forwards:
        rules = ",".join(
            f"guestfwd=tcp:{GUEST_PROXY}:{port}-cmd:{_opt(relay)}" for port, relay in plan.forwards
        )
        argv += [
            "-netdev", f"user,id=net0,restrict=on,{rules}",
            "-device", "virtio-net-device,netdev=net0",
        ]  # fmt: skip
    # guestfwd's `cmd:` forks, and its child calls setsid(), which QEMU's filter counts
    # among the privilege changes: both are allowed only when the run has network.
    allowed = "allow" if plan.forwards else "deny"
    argv += [
        "-sandbox",
        f"on,obsolete=deny,elevateprivileges={allowed},spawn={allowed},resourcecontrol=deny",
    ]
    return argv


def _cpu(plan: Plan) -> list[str]:
    """KVM: the host's CPU. TCG: QEMU's default on x86; on arm64 `virt` defaults to a 32-bit
    core, so the most capable emulated one (`max`)."""
    if plan.accel == "kvm":
        return ["-cpu", "host"]
    return ["-cpu", "max"] if plan.machine == "aarch64" else []


def relay_command(python: str, script: str, socket: str) -> str:
    """The command guestfwd runs per connection: stdio to the proxy's Unix socket.

    libslirp splits it shell-like (g_shell_parse_argv) and runs it without a shell."""
    return " ".join(shlex.quote(a) for a in (python, "-I", "-S", script, socket))


def _opt(value: str) -> str:
    """A value inside a QEMU option list: commas doubled."""
    return value.replace(",", ",,")


def _share(tag: str, path: str, *, readonly: bool) -> list[str]:
    ro = ",readonly=on" if readonly else ""
    return [
        "-fsdev", f"local,id={tag},path={_opt(path)},security_model=none{ro}",
        "-device", f"virtio-9p-device,fsdev={tag},mount_tag={tag}",
    ]  # fmt: skip


def _port(chardev: str, name: str, out: Output) -> list[str]:
    if out.fd is not None:
        fdset = {"stdout": 1, "stderr": 2}.get(chardev, 3)
        source = ["-add-fd", f"fd={out.fd},set={fdset}"]
        path = f"/dev/fdset/{fdset}"
    else:
        source, path = [], str(out.path)
    return [
        *source,
        "-chardev", f"file,id={chardev},path={_opt(path)},append=on",
        "-device", f"virtserialport,chardev={chardev},name={name}",
    ]  # fmt: skip


def tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host's TSC frequency in kHz, from /proc/cpuinfo's first `cpu MHz`."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "cpu MHz":
            try:
                return int(float(value) * 1000)
            except ValueError:
                return None
    return None
