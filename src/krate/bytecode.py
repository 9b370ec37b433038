"""A script's cached bytecode, when it is fresh: Python compiles a script given as source on
every start (about 1.5 ms for proxy.py, 2.5 ms for bridge.py), but runs a .pyc directly.

The helpers krate starts (the egress proxy, the bridge) run as scripts; this finds the
bytecode an import (or the install's byte-compiling) left in `__pycache__`, checked
against the source exactly as an import checks it. Standard library only: the explain
command's proxy starts before the lockdown (resolve_early.py).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not `from typing import ...`: explain loads this before its spawn
if TYPE_CHECKING:
    from pathlib import Path


def fresh(source: Path | str) -> Path | str | None:
    """`source`'s bytecode in its `__pycache__` when it is this interpreter's and matches the
    source (magic number, timestamp and size, as an import checks them), else None.

    A path as `source` gives a path, a string a string (explain starts its proxy without
    pathlib loaded: resolve_early.py)."""
    tag = sys.implementation.cache_tag
    folder, name = os.path.split(os.fspath(source))
    cached_name = os.path.join(
        folder, "__pycache__", f"{name.rpartition('.')[0] or name}.{tag}.pyc"
    )
    cached = cached_name if isinstance(source, str) else type(source)(cached_name)
    try:
        with open(cached, "rb") as fh:
            header = fh.read(16)
        stat = os.stat(source)
    except (OSError, TypeError):
        return None
    external = sys.modules.get("_frozen_importlib_external")
    ok = (
        external is not None
        and len(header) == 16
        and header[:4] == external.MAGIC_NUMBER
        and int.from_bytes(header[4:8], "little") == 0
        and int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == stat.st_size & 0xFFFFFFFF
    )
    return cached if ok else None
