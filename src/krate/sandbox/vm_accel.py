"""KVM or emulation (TCG): KVM only when a bounded probe boot under it works.

A `/dev/kvm` that opens is not proof: on a PVM host (this project's own CI
machines) every stock kernel hangs under KVM. So the first run with a given
kernel, initramfs and QEMU boots the guest once under KVM with `krate.probe` on
its command line (the init prints a line and powers off); if that line does not
appear within PROBE_S seconds the answer is TCG. The answer is cached beside the
kernel in krate's cache folder, so the probe costs once per kernel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

PROBE_S = 8.0
PROBE_LINE = b"krate-probe-ok"


def kvm_usable(device: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def choose(qemu: str, kernel: Path, initrd: Path, cache: Path, *, device: str = "/dev/kvm",
           machine: str = "x86_64") -> str:  # fmt: skip
    """ "kvm" or "tcg" for this kernel, probing (bounded) once and caching the answer."""
    if not kvm_usable(device):
        return "tcg"
    key = hashlib.sha256(f"{qemu}\0{kernel}\0{initrd}".encode()).hexdigest()[:24]
    cached = cache / f"accel-{key}"
    with contextlib.suppress(OSError):
        answer = cached.read_text().strip()
        if answer in ("kvm", "tcg"):
            return answer
    answer = "kvm" if probe(qemu, kernel, initrd, machine=machine) else "tcg"
    with contextlib.suppress(OSError):
        from krate.sandbox import vm_kernel

        vm_kernel.make_cache(cache)
        fd = os.open(cached, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, vm_kernel.file_mode(cache))
        with os.fdopen(fd, "w") as f:
            f.write(answer + "\n")
    return answer


def probe(qemu: str, kernel: Path, initrd: Path, *, machine: str = "x86_64",
          timeout: float = PROBE_S) -> bool:  # fmt: skip
    """Whether the guest boots to its init under KVM within `timeout` seconds."""
    from krate.sandbox.qemu import CONSOLE, MACHINE

    with tempfile.TemporaryDirectory(prefix="krate-kvm-probe-") as tmp:
        console = Path(tmp) / "console"
        argv = [
            qemu, "-M", MACHINE[machine], "-accel", "kvm", "-cpu", "host", "-m", "128",
            "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console={CONSOLE[machine]} reboot=t panic=-1 quiet krate.probe",
        ]  # fmt: skip
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            return PROBE_LINE in console.read_bytes()
    return False
