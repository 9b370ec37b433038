"""krate's policy code for the egress proxy, sent over its stdin: only the stdlib on its path.

Why: the proxy can reach the network, so nothing but the standard library and
krate's own decision code may ever be importable in it. It runs `python -I -S`
(no site-packages, no .pth files, no PYTHON* variables, not even its own
folder), so its path is the standard library alone; the few pure krate modules
it decides with are read here, from krate's own installation, and sent with its
configuration. The proxy serves exactly those names from memory, after the
standard library (proxy.py, `install_given`). A third-party package, or a
`pathlib.py` planted next to krate in site-packages (the folder krate is
installed in, when it is not an editable install), is never on its path.

Chosen over copying the files to a private folder (which also works) because a
file created in /tmp costs about 0.3 ms here and this runs on every networked
`krate run`; over compiling the decisions into data because the proxy then
decides with the very code `krate policy explain` uses. Each module goes as its
cached bytecode when that bytecode matches its source (the check Python itself
makes; the proof compares bytecode with its source), else as source.
"""

from __future__ import annotations

import binascii
import os
import sys
import zlib
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parent.parent.parent  # the folder holding the `krate` package
# What `krate.policy.decide` needs, and nothing more (a test keeps this equal to its imports).
MODULES = (
    "krate/errors.py",
    "krate/policy/decide.py",
    "krate/policy/hosts.py",
    "krate/policy/model.py",
    "krate/policy/paths.py",
)
# Served as empty packages: the real `krate/policy/__init__.py` loads the whole policy loader.
PACKAGES = ("krate", "krate.policy")
_TAG = sys.implementation.cache_tag


def given() -> dict[str, dict[str, Any]]:
    """{name: {"path": source path, "code" | "source": base64 of zlib of bytecode | source}}.

    Compressed so that the whole configuration line stays well under a pipe's 64 KiB
    (a larger write would wait for the proxy to start reading).
    """
    out: dict[str, dict[str, Any]] = {name: {"package": True} for name in PACKAGES}
    for rel in MODULES:
        source = SRC / rel
        data = source.read_bytes()
        entry: dict[str, Any] = {"path": rel}
        code = _bytecode(source, data)
        key, raw = ("code", code) if code is not None else ("source", data)
        entry[key] = binascii.b2a_base64(zlib.compress(raw, 1), newline=False).decode("ascii")
        out[rel[: -len(".py")].replace("/", ".")] = entry
    return out


def _bytecode(source: Path, data: bytes) -> bytes | None:
    """The marshalled code of the cached bytecode, if it matches the source as Python checks."""
    if not _TAG:
        return None
    try:
        pyc = (source.parent / "__pycache__" / f"{source.stem}.{_TAG}.pyc").read_bytes()
        mtime = int(os.stat(source).st_mtime)
    except OSError:
        return None
    fresh = (
        len(pyc) > 16
        and pyc[:4] == _magic()
        and int.from_bytes(pyc[4:8], "little") == 0
        and int.from_bytes(pyc[8:12], "little") == mtime & 0xFFFFFFFF
        and int.from_bytes(pyc[12:16], "little") == len(data) & 0xFFFFFFFF
    )
    return pyc[16:] if fresh else None


def _magic() -> bytes:
    external = sys.modules.get("_frozen_importlib_external")  # loaded at every start-up
    if external is not None:
        return external.MAGIC_NUMBER
    from importlib.util import MAGIC_NUMBER

    return MAGIC_NUMBER
