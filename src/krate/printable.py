"""Text the record can hold: bytes that are not UTF-8 (argv, file names) as `\\xNN`.

On Linux arguments and file names are bytes; Python carries undecodable ones as
lone surrogates (`surrogateescape`), which JSON, SQLite and the hash chain cannot
hold. They are legitimate, so they are recorded, each such byte written as the
four characters `\\xNN` (Python's `backslashreplace`), and the rest kept as it is.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any


def printable(value: Any) -> Any:
    """`value` (a string, or dicts and lists of them) with every string valid UTF-8."""
    if isinstance(value, str):
        try:
            value.encode()
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    return value
