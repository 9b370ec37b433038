"""SHA-256 from the interpreter's builtin module, not hashlib's OpenSSL.

`import hashlib` loads OpenSSL (`_hashlib`): about 2 ms of every krate start, for
one algorithm the interpreter also builds in. Same digests (tests/test_startup.py
checks them against hashlib). Python 3.12 renamed the module `_sha2`; a build
without either falls back to hashlib.
"""

from __future__ import annotations

try:
    from _sha2 import sha256
except ImportError:
    try:
        from _sha256 import sha256
    except ImportError:  # pragma: no cover - an interpreter built without it
        from hashlib import sha256

__all__ = ["hexdigest", "sha256"]


def hexdigest(data: bytes) -> str:
    """The SHA-256 of `data`, as 64 lowercase hex digits."""
    return sha256(data).hexdigest()
