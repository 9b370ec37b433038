"""The egress proxy's private import path: the standard library, then a copy of krate's policy code.

Why: the proxy can reach the network, so nothing but the standard library and
krate's own decision code may ever be importable in it. It runs `python -I -S`
(no site-packages, no .pth files, no PYTHON* variables, not even its own
folder), and the few pure krate modules it needs are copied into a fresh 0700
folder that the proxy appends *after* the standard library: a third-party
package, or a `pathlib.py` planted next to krate in site-packages (the folder
krate is installed in, when it is not an editable install), is never on its path.

The copies are the installed sources with their cached bytecode when that
bytecode matches the source's mtime and size (as Python itself checks), so the
proxy does not recompile them on every run. `krate audit network --prove`
compares cached bytecode with a fresh compile of its source.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent.parent  # the folder holding the `krate` package
PROXY = Path(__file__).resolve().with_name("proxy.py")
# What `krate.policy.decide` needs, and nothing more (a test keeps this equal to its imports).
MODULES = (
    "krate/errors.py",
    "krate/policy/decide.py",
    "krate/policy/hosts.py",
    "krate/policy/model.py",
    "krate/policy/paths.py",
)
# Empty package markers: the real `krate/policy/__init__.py` loads the whole policy loader.
PACKAGES = ("krate/__init__.py", "krate/policy/__init__.py")
_TAG = sys.implementation.cache_tag


def install(folder: Path) -> Path:
    """Fill the private, empty `folder` with proxy.py and krate's policy code; return the script."""
    for name in PACKAGES:
        target = folder / name
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.write_bytes(b"")
        os.chmod(target, 0o600)
    for name in MODULES:
        _copy(SRC / name, folder / name)
    script = folder / "proxy.py"
    shutil.copyfile(PROXY, script)
    os.chmod(script, 0o600)
    return script


def _copy(source: Path, target: Path) -> None:
    shutil.copy2(source, target)  # keeps the mtime: the cached bytecode stays valid
    os.chmod(target, 0o600)
    cached = source.parent / "__pycache__" / f"{source.stem}.{_TAG}.pyc"
    try:
        header = cached.read_bytes()[:16] if _TAG else b""
    except OSError:
        return
    stat = source.stat()
    flags = int.from_bytes(header[4:8], "little") if len(header) == 16 else -1
    fresh = (
        flags == 0
        and int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == stat.st_size & 0xFFFFFFFF
    )
    if fresh:
        folder = target.parent / "__pycache__"
        folder.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(cached, folder / cached.name)
        os.chmod(folder / cached.name, 0o600)
