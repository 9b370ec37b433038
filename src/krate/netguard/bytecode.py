"""Cached bytecode that matches its source: the proof's answer to planted `.pyc` files.

Python runs `__pycache__/x.cpython-311.pyc` instead of `x.py` whenever the
bytecode's header names the source's mtime and size: it never reads the source.
So a `.pyc` rewritten with the original header runs code that no `.py` file, and
no RECORD hash (pip lists bytecode without one), shows; it can even act only
while the process is not locked down yet. Interpreter start cannot be made
hermetic from inside krate (the bytecode runs before krate does, and compiling
every module at each start would cost more than the whole start-up), so the
proof checks instead: each bytecode file is unmarshalled and compared with a
fresh compile of its source (code objects compare by instructions, constants,
names and nested code; `marshal` output itself is not reproducible byte for
byte). A header that no longer matches its source is stale: Python ignores it
and compiles the source, so it is reported but harmless. Bytecode without a
source cannot be checked and fails.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import time
from collections.abc import Iterable
from typing import Any

MAGIC = importlib.util.MAGIC_NUMBER


def check_file(pyc: str) -> str:
    """'ok', 'stale' (Python ignores it), or why it fails ('differs', 'no source', ...)."""
    try:
        data = open(pyc, "rb").read()  # noqa: SIM115 (short read)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if data[:4] != MAGIC:
        return "stale"  # another Python's bytecode: this one ignores it
    try:
        source_path = importlib.util.source_from_cache(pyc)
    except ValueError:
        return "no source (bytecode-only module)"
    try:
        source = open(source_path, "rb").read()  # noqa: SIM115
        stat = os.stat(source_path)
    except OSError:
        return "no source (bytecode-only module)"
    flags = int.from_bytes(data[4:8], "little")
    if flags & 1:  # hash-based
        if data[8:16] != importlib.util.source_hash(source):
            return "stale" if flags & 2 else "differs (unchecked hash-based bytecode)"
    elif (
        int.from_bytes(data[8:12], "little") != int(stat.st_mtime) & 0xFFFFFFFF
        or int.from_bytes(data[12:16], "little") != stat.st_size & 0xFFFFFFFF
    ):
        return "stale"
    try:
        cached = marshal.loads(data[16:])
    except (ValueError, EOFError, TypeError):
        return "differs (not readable bytecode)"
    optimize = _optimization(pyc)
    try:
        fresh = compile(source, source_path, "exec", dont_inherit=True, optimize=optimize)
    except (SyntaxError, ValueError):
        return "differs (its source does not compile)"
    return "ok" if cached == fresh else "differs from a fresh compile of its source"


def _optimization(pyc: str) -> int:
    name = os.path.basename(pyc)
    if ".opt-2." in name:
        return 2
    if ".opt-1." in name:
        return 1
    return 0


def check(files: Iterable[str]) -> dict[str, Any]:
    """Every file checked; fails when any bytecode differs from its source."""
    started = time.perf_counter()
    files = sorted(set(files))
    bad, stale = [], []
    for pyc in files:
        verdict = check_file(pyc)
        if verdict == "stale":
            stale.append(pyc)
        elif verdict != "ok":
            bad.append({"file": pyc, "why": verdict})
    return {
        "ok": not bad,
        "files_checked": len(files),
        "differ": bad,
        "stale_ignored_by_python": stale,
        "seconds": round(time.perf_counter() - started, 3),
    }
