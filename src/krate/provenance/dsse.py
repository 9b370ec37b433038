"""DSSE envelopes for in-toto Statements (unsigned for now).

krate has no signing key yet, so `signatures` is an empty list: the envelope only
carries the exact Statement bytes. `pae()` is the byte string a future signature
must cover (DSSE v1 pre-authentication encoding), kept here so signing can be
added without changing the payload. Never re-serialises the payload.
"""

from __future__ import annotations

import base64
from typing import Any

PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """`DSSEv1 <len(type)> <type> <len(body)> <body>`, lengths in ASCII decimal bytes."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> dict[str, Any]:
    """An unsigned envelope around the exact `payload` bytes."""
    return {
        "payloadType": payload_type,
        "payload": base64.standard_b64encode(payload).decode("ascii"),
        "signatures": [],
    }


def payload_of(env: dict[str, Any]) -> bytes:
    """The payload bytes of an envelope (for checking one by hand or in tests)."""
    return base64.standard_b64decode(env["payload"])
