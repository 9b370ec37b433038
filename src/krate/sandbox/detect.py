"""Which sandbox backend this platform uses, and whether it is installed.

Cheap on purpose (no subprocess): `krate info` calls it; `krate doctor` runs a
real sandboxed command to check that the backend works. On macOS only
`/usr/bin/sandbox-exec` is used, never one found on PATH (a planted `sandbox-exec`
earlier on PATH would otherwise run every workload unconfined).
"""

from __future__ import annotations

import os
import sys

from krate.records import NamedTuple


class Backend(NamedTuple):
    backend: str
    available: bool
    executable: str | None
    install_hint: str

    def to_dict(self) -> dict:
        return self._asdict()


def detect(path: str | None = None, platform: str = sys.platform) -> Backend:
    if platform == "darwin":
        from krate.sandbox.seatbelt import SANDBOX_EXEC

        exe = SANDBOX_EXEC if os.access(SANDBOX_EXEC, os.X_OK) else None
        return Backend("seatbelt", exe is not None, exe, "sandbox-exec ships with macOS")
    if platform.startswith("linux"):
        exe = which("bwrap", path)
        return Backend(
            "bubblewrap",
            exe is not None,
            exe,
            "install bubblewrap: `sudo apt-get install bubblewrap` (Debian/Ubuntu) or "
            "`sudo dnf install bubblewrap` (Fedora)",
        )
    return Backend("none", False, None, f"krate has no sandbox backend for {platform}")


def which(name: str, path: str | None = None) -> str | None:
    """`shutil.which` for a bare name on POSIX, without importing shutil (about 1.5 ms
    of every `krate run`, with the bz2 and lzma modules it loads)."""
    if path is None:
        path = os.environ.get("PATH", os.defpath)
    if not path:
        return None
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None
