"""`--vm`: which micro-VM backend this machine has, and what it is missing.

Linux: QEMU's `microvm` (backend_qemu.py). macOS 26 on Apple silicon: Apple's
`container` CLI (backend_container.py). Anything else refuses `--vm` (125) with
the reason. `status()` is what `krate doctor` shows: each part found or the exact
command that installs it. Nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

from krate.errors import EXIT_KRATE_FAILED, KrateError, UsageError


class Part(NamedTuple):
    name: str
    found: str | None  # what was found (a path, a version), or None
    hint: str  # how to get it when missing


def qemu_executable(machine: str | None = None) -> str | None:
    from krate.sandbox.qemu import EXECUTABLE

    return shutil.which(EXECUTABLE.get(machine or platform.machine(), "qemu-system-x86_64"))


def status(machine: str | None = None, plat: str = sys.platform) -> list[Part]:
    """The micro-VM's parts on this machine, for `krate doctor`."""
    if plat == "darwin":
        from krate.sandbox import container

        return container.status()
    from krate.sandbox import vm_initramfs, vm_kernel
    from krate.sandbox.qemu import PACKAGE

    machine = machine or platform.machine()
    package = PACKAGE.get(machine, "qemu-system-x86")
    kernel = vm_kernel.find()
    busybox = vm_initramfs.find_busybox()
    return [
        Part("qemu", qemu_executable(machine), f"`sudo apt-get install {package}`"),
        Part(
            "kernel",
            None if kernel is None else f"{kernel.version} ({kernel.image})",
            vm_kernel.install_hint(machine),
        ),
        Part("busybox", None if busybox is None else str(busybox), vm_initramfs.BUSYBOX_HINT),
    ]


def acceleration(data_dir: Path, plat: str = sys.platform) -> str:
    """What `krate doctor` says about KVM: the cached probe's answer, or what will decide."""
    if plat == "darwin":
        return "Virtualization.framework"
    from krate.sandbox import vm_accel
    from krate.sandbox.backend_qemu import cache_dir

    if not vm_accel.kvm_usable():
        return "no usable /dev/kvm: emulated (TCG), a few seconds per run"
    answers = set()
    with contextlib.suppress(OSError):
        answers = {p.read_text().strip() for p in cache_dir(data_dir).glob("accel-*")}
    if answers == {"kvm"}:
        return "KVM (a probe boot worked)"
    if "tcg" in answers:
        return "/dev/kvm opens but a probe boot hung or failed: emulated (TCG), slow"
    return "/dev/kvm opens; the first --vm run probes whether KVM boots (else TCG)"


def choose(
    vm: bool, rootfs: Path | None, data_dir: Path, plat: str = sys.platform, *,
    user: str | None = None, image_env: dict[str, str] | None = None,
):  # fmt: skip
    """The micro-VM backend for `--vm --rootfs DIR`, its guest ready (kernel, initramfs and
    acceleration decided, so the run records `qemu-kvm` or `qemu-tcg`); UsageError or 125.

    For an image (the images work): `rootfs` is its unpacked root, `user` its config's user
    as numeric "UID[:GID]" (looked up in the image's /etc/passwd) and `image_env` its config's
    environment (PATH above all)."""
    if not vm:
        raise UsageError("--rootfs is for --vm runs: add --vm")
    if rootfs is None:
        raise UsageError("--vm needs an image: krate run --vm IMAGE -- CMD (see `krate image`)")
    if plat == "darwin":
        from krate.sandbox import container

        return container.choose(rootfs)
    if not plat.startswith("linux"):
        raise KrateError(f"krate has no micro-VM backend for {plat}", exit_code=EXIT_KRATE_FAILED)
    missing = [p for p in status() if p.found is None]
    if missing:
        part = missing[0]
        raise KrateError(
            f"cannot run --vm: {part.name} is missing; {part.hint} (see `krate doctor`)",
            exit_code=EXIT_KRATE_FAILED,
        )
    from krate.sandbox.backend_qemu import Qemu

    exe = qemu_executable()
    assert exe is not None
    from krate.sandbox.vm_run import GuestUser

    guest = GuestUser.parse(user) if user else None
    backend = Qemu(exe, Path(rootfs).absolute(), user=guest, image_env=image_env)
    backend.guest(data_dir)
    return backend
