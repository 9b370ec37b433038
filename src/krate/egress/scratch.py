"""The run's socket folder and the proxy's error file, without tempfile or shutil.

Why not tempfile and shutil: every networked `krate run` makes one private folder (the
proxy's socket, the bridge) and one unlinked file (the proxy's own errors) before its
sandbox starts, and importing tempfile (it loads shutil with bz2 and lzma, and random)
cost about 3 ms of CPU on that path (docs/startup.md). The folder goes where tempfile
would put it: the first usable of $TMPDIR, $TEMP, $TMP, /tmp, /var/tmp, /usr/tmp and the
working folder, in tempfile's order (the variables are the ones tempfile itself reads),
with a random name, mode 0700, created exclusively as `tempfile.mkdtemp` does.
"""

from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import IO

ATTEMPTS = 100  # names tried per folder, as tempfile


def candidates() -> list[str]:
    """Where tempfile looks for its folder, in its order (`tempfile._candidate_tempdir_list`)."""
    found = [value for name in ("TMPDIR", "TEMP", "TMP") if (value := os.getenv(name))]
    found += ["/tmp", "/var/tmp", "/usr/tmp"]
    try:
        found.append(os.getcwd())
    except OSError:
        found.append(os.curdir)
    return found


def make_folder(prefix: str) -> Path:
    """A new private folder (0700) named `prefix` + 16 random hex digits, made exclusively
    in the first candidate folder that takes it; FileNotFoundError when none does."""
    for base in candidates():
        base = base if base == os.curdir else os.path.abspath(base)
        for _ in range(ATTEMPTS):
            path = os.path.join(base, prefix + os.urandom(8).hex())
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError:
                break  # not usable: the next candidate, as tempfile does
            return Path(os.path.abspath(path))
    raise FileNotFoundError(f"no usable temporary folder in {candidates()}")


def unlinked_file(folder: Path, name: str) -> IO[bytes]:
    """A read-write file with no name left (as tempfile.TemporaryFile), made in `folder`."""
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.unlink(path)
        return os.fdopen(fd, "w+b")
    except BaseException:
        os.close(fd)
        raise


def copy(source: Path, target: Path, mode: int) -> None:
    """A new file `target` (refused if it exists) with `source`'s bytes and `mode`."""
    data = source.read_bytes()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.chmod(target, mode)


def remove(folder: Path) -> None:
    """Remove the run's folder: its files (the socket, the bridge), then itself; errors
    ignored, as `shutil.rmtree(ignore_errors=True)`, which takes over anything unexpected."""
    try:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    except FileNotFoundError:
        return
    except OSError:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
