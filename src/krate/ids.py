"""Sortable record ids (runs, builds), and the one way a user names a record: its id, a
unique prefix of it, or `last`.

An id is 16 characters of Crockford's base32 in lower case: 10 of milliseconds since
1970, then 6 random (30 bits), so ids sort by time and a few leading characters name a
record. Written here because the standard library's base32 has another alphabet and
pads; this module is on `krate run`'s path, so it imports nothing but `os` and `time`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from krate.errors import NotFound, UsageError

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import TypeVar

    Row = TypeVar("Row")

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
LAST = "last"


def new_id(now_ms: int | None = None, rand: int | None = None) -> str:
    """16 characters, sortable by time: 10 of milliseconds, 6 random."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    r = int.from_bytes(os.urandom(4), "big") & (2**30 - 1) if rand is None else rand
    head = "".join(CROCKFORD[(ms >> (5 * i)) & 31] for i in range(9, -1, -1))
    return head + "".join(CROCKFORD[(r >> (5 * i)) & 31] for i in range(5, -1, -1))


def resolve(
    ref: str,
    noun: str,
    *,
    last: Callable[[], Row | None],
    exact: Callable[[str], Row | None],
    prefixed: Callable[[str], list[Row]],
    none_yet: str,
    listing: str,
) -> Row:
    """The record `ref` names: its id, a unique id prefix (any case) or `last` (the newest).

    Raises NotFound (none, or none yet) or UsageError (a prefix shared by several ids).
    `prefixed` returns up to a few records whose id starts with the prefix, in id order.
    """
    ref = ref.strip()
    if ref == LAST:
        row = last()
        if row is None:
            raise NotFound(none_yet)
        return row
    low = ref.lower()
    row = exact(low) if low else None
    if row is not None:
        return row
    matches = prefixed(low) if low else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(getattr(m, "id", str(m)) for m in matches[:10])
        more = " and more" if len(matches) > 10 else ""
        raise UsageError(
            f"{noun} id prefix {ref!r} is ambiguous ({shown}{more}); give more characters"
        )
    raise NotFound(f"no {noun} {ref!r}; see `{listing}`")
