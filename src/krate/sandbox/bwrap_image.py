"""bubblewrap on an OCI image: the image's root read-only instead of the host's.

bubblewrap 0.8 (Debian 12) has no overlays, and on a read-only bind of the image at `/` it
cannot create the mount points it needs (/dev, /work). So `/` is an empty tmpfs, each
top-level entry of the unpacked image is bound read-only onto it (links re-made as links),
the mounts follow, and `/` is remounted read-only last: the image's files are read-only,
/tmp, /var/tmp, /run and the image user's home are empty throwaway tmpfs, and the
workspace is at /work (the only host folder mounted, with the policy's read-only and
hidden paths inside it). The uid inside is the image's User (root when none), mapped to
the caller's uid outside: no capability is kept either way.

The egress bridge is krate's own program run by the host's Python, whatever the image
holds: an image's `python3` (if it has one) could be anything, and the bridge holds the
socket to the proxy. So, only when the run has network, the host's /usr is bound read-only
at /.krate/host/usr and that Python is started through its own dynamic loader with the
libraries from there (`ld.so --library-path`), never from the image's /lib.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.sandbox.spec import SandboxSpec, is_within, mount_order

WORK = "/work"
HOST = "/.krate/host"
WRITABLE = ("/tmp", "/var/tmp", "/run")
# Never a throwaway home: where bubblewrap or krate mount something of their own.
NOT_HOME = ("/", WORK, "/dev", "/proc", "/.krate")
# An image's Env is the image author's: as bubblewrap's own environment it would steer a
# host process (LD_PRELOAD, GLIBC_TUNABLES, ...). So bubblewrap runs with an empty
# environment (`HOST_ENV`) and sets the workload's itself (`--clearenv --setenv ...`),
# read from a memory file (`--args FD`): values never appear on a command line other
# users can read. Behind the bridge, which is the host's Python, the loader variables
# are left out altogether.
HOST_ENV: dict[str, str] = {}
LOADER_VARIABLES = ("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "GCONV_PATH", "GLIBC_TUNABLES")


_SKIP_TOP = {"dev", "proc", ".krate"}  # bubblewrap makes these; .krate is krate's
# Top-level names krate mounts on (or under): an image's link there would move the mount
# (into the workspace, say, where bubblewrap would make folders on the host), so a link
# at one of these names is not re-made; a folder is kept (mounted over).
RESERVED_TOP = {"tmp", "work", "run", "var"}


def filesystem(
    spec: SandboxSpec,
    size: list[str],
    proc: list[str],
    empty: Callable[[], int],
    fds: list[int],
) -> tuple[list[str], list[str]]:
    """(bubblewrap's filesystem arguments, the command to run) for a run on `spec.image`."""
    image = spec.image
    source = Path(image.stage or image.rootfs)  # where bubblewrap finds it (image_stage.py)
    args = ["--tmpfs", "/"]
    for name in sorted(os.listdir(image.rootfs)):
        if name in _SKIP_TOP:
            continue
        path = image.rootfs / name
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if name not in RESERVED_TOP:
                args += ["--symlink", os.readlink(path), f"/{name}"]
        elif stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            args += ["--ro-bind", str(source / name), f"/{name}"]
    args += proc
    for folder in WRITABLE:
        if _plain_dir(image.rootfs, folder):
            args += [*size, "--tmpfs", folder]
    # A throwaway home only where it hides nothing of the image (bubblewrap 0.8 has no
    # overlay to make the image's own files writable); otherwise it stays read-only.
    home = image.home
    if not _reserved(home) and _plain_dir(image.rootfs, home) and _empty(image.rootfs, home):
        args += [*size, "--tmpfs", home]
    if not _plain_dir(image.rootfs, "/tmp"):
        args += [*size, "--tmpfs", "/tmp"]
    args += _workspace(spec, empty, fds)
    for bind in spec.extra_binds:
        if bind.data is not None:
            # The host's resolver files (egress/etc.py) name host paths; an image keeps its
            # own /etc, so clients that ignore the proxy variables get no DNS (docs/images.md).
            continue
        args += ["--bind" if bind.writable else "--ro-bind", str(bind.source), str(bind.dest)]
    workload = list(spec.argv)
    if spec.extra_binds and _is_bridge(workload):
        host_args, workload = _host_python(workload)
        args += host_args
        env = {k: v for k, v in spec.env.items() if k not in LOADER_VARIABLES}
    else:
        env = dict(spec.env)
    args += _environment(env, fds)
    from krate.images.runtime import inside

    args += ["--uid", str(image.uid), "--gid", str(image.gid)]
    args += ["--remount-ro", "/", "--chdir", inside(spec.cwd, spec.workspace)]
    return args, workload


def _environment(env: dict[str, str], fds: list[int]) -> list[str]:
    """`--args FD`: a memory file telling bubblewrap the workload's whole environment."""
    words = [b"--clearenv"]
    for key, value in env.items():
        words += [b"--setenv", os.fsencode(key), os.fsencode(value)]
    fd = os.memfd_create("krate-env", 0)
    data = memoryview(b"\0".join(words) + b"\0")
    while data:
        data = data[os.write(fd, data) :]
    os.lseek(fd, 0, os.SEEK_SET)
    fds.append(fd)
    return ["--args", str(fd)]


def _empty(rootfs: Path, folder: str) -> bool:
    try:
        return not os.listdir(str(rootfs) + folder)
    except OSError:
        return False


def _reserved(folder: str) -> bool:
    folder = "/" + folder.strip("/")
    return folder == "/" or any(folder == p or folder.startswith(p + "/") for p in NOT_HOME[1:])


def _plain_dir(rootfs: Path, folder: str) -> bool:
    """`folder` is a real folder in the image (not a link, which could lead anywhere)."""
    try:
        return stat.S_ISDIR(os.lstat(str(rootfs) + folder).st_mode) and not any(
            os.path.islink(str(rootfs) + "/" + "/".join(folder.strip("/").split("/")[: i + 1]))
            for i in range(folder.count("/"))
        )
    except OSError:
        return False


def _workspace(spec: SandboxSpec, empty: Callable[[], int], fds: list[int]) -> list[str]:
    """The policy's mounts that lie in the workspace, moved to /work; nothing else of the host."""
    args: list[str] = []
    for kind, path in mount_order(spec):
        if not is_within(path, spec.workspace):
            continue
        if spec.run_as is not None and not spec.run_as.reaches(path):
            continue
        rel = os.path.relpath(path, spec.workspace)
        dest = WORK if rel == "." else f"{WORK}/{rel}"
        if kind == "bind":
            args += ["--bind", str(path), dest]
        elif kind == "ro":
            args += ["--ro-bind", str(path), dest]
        elif path.is_dir():
            args += ["--tmpfs", dest, "--remount-ro", dest]
        else:
            fd = empty()
            fds.append(fd)
            args += ["--perms", "0444", "--ro-bind-data", str(fd), dest]
    return args


def _is_bridge(argv: list[str]) -> bool:
    """The egress bridge's command (egress EgressSession.wrap_argv): host Python -I -S bridge."""
    return (
        len(argv) > 3
        and argv[1:3] == ["-I", "-S"]
        and argv[3].endswith(("/bridge.py", "/bridge.pyc"))  # the source, or its bytecode
    )


def _host_python(argv: list[str]) -> tuple[list[str], list[str]]:
    """Mounts and command to run the bridge with the host's Python from /.krate/host."""
    python = os.path.realpath(argv[0])
    loader = interpreter(python)
    if loader is None:
        raise KrateError(
            f"cannot start the egress bridge in an image: {python} has no ELF interpreter",
            exit_code=EXIT_KRATE_FAILED,
        )
    loader = os.path.realpath(loader)
    needed = {os.path.dirname(loader), os.path.dirname(python)}
    tops = sorted({"/" + p.strip("/").split("/")[0] for p in needed})
    args: list[str] = []
    for top in tops:
        if os.path.islink(top) or not os.path.isdir(top):
            raise KrateError(
                f"cannot start the egress bridge in an image: {top} is not a folder",
                exit_code=EXIT_KRATE_FAILED,
            )
        args += ["--ro-bind", top, HOST + top]
    libs = [HOST + os.path.dirname(loader)]
    return args, [HOST + loader, "--library-path", ":".join(libs), HOST + python, *argv[1:]]


def interpreter(executable: str) -> str | None:
    """The ELF program interpreter (PT_INTERP) of `executable`: its dynamic loader."""
    import struct

    try:
        with open(executable, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                return None
            wide = head[4] == 2
            order = "<" if head[5] == 1 else ">"
            if wide:
                (phoff,) = struct.unpack_from(order + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            else:
                (phoff,) = struct.unpack_from(order + "I", head, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                entry = f.read(phentsize)
                if struct.unpack_from(order + "I", entry, 0)[0] != 3:  # PT_INTERP
                    continue
                if wide:
                    (offset,) = struct.unpack_from(order + "Q", entry, 8)
                    (filesz,) = struct.unpack_from(order + "Q", entry, 32)
                else:
                    (offset,) = struct.unpack_from(order + "I", entry, 4)
                    (filesz,) = struct.unpack_from(order + "I", entry, 16)
                f.seek(offset)
                return f.read(filesz).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None
