"""The micro-VM's kernel: the distribution's, found on disk, never downloaded.

A kernel is usable when its image (`boot/vmlinuz-V`) and its modules
(`lib/modules/V`) are both present under one of `ROOTS`, and it has 9p (Debian's
generic `linux-image-amd64` does, as modules; the `-cloud` flavour does not). The
system's own `/boot` comes first; `/usr/local/lib/krate/kernel` holds a package
extracted with `dpkg-deb -x` (scripts/install does that, so a CI machine's /boot
and boot loader are never touched).

Under emulation (TCG) an uncompressed kernel boots about 4 s faster than the
xz-compressed bzImage, so the ELF `vmlinux` inside is extracted once (lzma/zlib
from the standard library: no `extract-vmlinux` script needed) and cached by the
image's digest. QEMU boots it through its PVH note.

Module load order comes from each module's own `depends=` (its .modinfo section),
so no `modules.dep` is needed (an extracted package has none: depmod never ran).
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import platform
import re
import zlib
from pathlib import Path
from typing import NamedTuple

ROOTS = (Path("/"), Path("/usr/local/lib/krate/kernel"))
# A root krate's cache: QEMU runs as the workspace's owner and must open the kernel and
# initramfs (public: a distribution kernel and busybox), so they cannot live in root's
# private data folder. Everyone else's cache is in their own data folder, private.
SYSTEM_CACHE = Path("/var/cache/krate/vm")
# What the guest init loads, by name; their dependencies come first (modinfo).
MODULES = ("virtio_mmio", "virtio_console", "9pnet_virtio", "9p", "overlay")
NET_MODULES = ("virtio_net",)
PACKAGE = {"x86_64": "linux-image-amd64", "aarch64": "linux-image-arm64"}
XZ_MAGIC = b"\xfd7zXZ\x00"
SUFFIXES = (".ko", ".ko.xz", ".ko.gz")  # Debian 13 compresses modules with xz; zstd: not read
GZIP_MAGIC = b"\x1f\x8b\x08"


class Kernel(NamedTuple):
    version: str
    image: Path  # vmlinuz as shipped
    modules: Path  # lib/modules/VERSION

    def module_path(self, name: str) -> Path | None:
        return _module_index(self.modules).get(_norm(name))


def install_hint(machine: str | None = None) -> str:
    package = PACKAGE.get(machine or platform.machine(), "linux-image-amd64")
    return (
        f"no kernel with 9p found; install one: `sudo apt-get install {package}` (or, "
        f"without touching /boot: `apt-get download` its linux-image-VERSION package and "
        f"`sudo dpkg-deb -x PACKAGE.deb {ROOTS[1]}`)"
    )


def find(roots: tuple[Path, ...] = ROOTS) -> Kernel | None:
    """The newest kernel with 9p and its modules under `roots`, searched in order."""
    for root in roots:
        found = []
        with contextlib.suppress(OSError):
            for image in (root / "boot").glob("vmlinuz-*"):
                version = image.name[len("vmlinuz-") :]
                if not os.access(image, os.R_OK):  # e.g. Ubuntu's /boot: root's only
                    continue
                for lib in ("lib", "usr/lib"):
                    modules = root / lib / "modules" / version
                    if (modules / "kernel").is_dir():
                        kernel = Kernel(version, image, modules)
                        if kernel.module_path("9p") is not None:
                            found.append(kernel)
                        break
        if found:
            return max(found, key=lambda k: _version_key(k.version))
    return None


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.-]", version))


def _norm(name: str) -> str:
    return name.replace("-", "_")


_INDEX: dict[Path, dict[str, Path]] = {}


def _module_index(modules: Path) -> dict[str, Path]:
    if modules not in _INDEX:
        index: dict[str, Path] = {}
        for dirpath, _dirs, files in os.walk(modules / "kernel"):
            for name in files:
                for suffix in SUFFIXES:
                    if name.endswith(suffix):
                        index.setdefault(_norm(name[: -len(suffix)]), Path(dirpath) / name)
        _INDEX[modules] = index
    return _INDEX[modules]


def module_bytes(path: Path) -> bytes:
    """The module as busybox's insmod loads it: decompressed."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return data


def depends(path: Path) -> list[str]:
    """A module's `depends=` list, read from its .modinfo strings."""
    data = module_bytes(path)
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if match is None:
        return []
    return [_norm(n) for n in match.group(1).decode().split(",") if n]


def load_order(kernel: Kernel, wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(name, path) for `wanted` and their dependencies, dependencies first.

    A wanted module the kernel does not have as a module is skipped: it is built in.
    """
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path = kernel.module_path(name)
        if path is None:
            return
        for dep in depends(path):
            visit(dep)
        order.append((name, path))

    for name in wanted:
        visit(_norm(name))
    return order


def vmlinux(kernel: Kernel, cache: Path) -> Path:
    """The uncompressed ELF kernel inside `kernel.image`, cached by the image's digest;
    the image itself when no payload is found (QEMU boots a bzImage too, slower)."""
    data = kernel.image.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    target = cache / f"vmlinux-{digest[:32]}"
    if target.exists():
        return target
    elf = _payload(data)
    if elf is None:
        return kernel.image
    make_cache(cache)
    tmp = target.with_name(target.name + f".{os.getpid()}")
    tmp.write_bytes(elf)
    os.chmod(tmp, file_mode(cache))
    os.replace(tmp, target)
    return target


def shared(cache: Path) -> bool:
    return cache == SYSTEM_CACHE or SYSTEM_CACHE in cache.parents


def file_mode(cache: Path) -> int:
    return 0o644 if shared(cache) else 0o600


def make_cache(cache: Path) -> None:
    """The cache folder: private (0700) in a data folder, readable in SYSTEM_CACHE."""
    mode = 0o755 if shared(cache) else 0o700
    for folder in reversed([cache, *cache.parents]):
        if not folder.exists():
            folder.mkdir(mode=mode)
            os.chmod(folder, mode)


def _payload(data: bytes) -> bytes | None:
    for magic, open_stream in ((XZ_MAGIC, _unxz), (GZIP_MAGIC, _gunzip)):
        at = data.find(magic)
        while at >= 0:
            with contextlib.suppress(lzma.LZMAError, zlib.error, EOFError):
                out = open_stream(data[at:])
                if out.startswith(b"\x7fELF"):
                    return out
            at = data.find(magic, at + 1)
    return None


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(data)


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
