"""Canonical JSON: sorted keys, no spaces, UTF-8 unescaped. One encoder for every hash.

The event chain (store/events.py), the policy hash (policy/decide.py) and in-toto
statements (provenance/statement.py) hash these exact bytes, so the settings below must
never change. The standard library's `json` does the work; this only fixes its settings.
Loaded by the egress proxy too (egress/helperlib.py): standard library only.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

dumps = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


def encode(obj: Any) -> bytes:
    """The canonical text as UTF-8 bytes."""
    return dumps(obj).encode("utf-8")
