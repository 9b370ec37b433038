"""The only package that talks SQL: the SQLite store, its migrations and the event chain.

`Store` and `open_store` load sqlite-utils on first use, not when the package is
imported, so a light module here (store/completion.py, used at every TAB) stays light.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.store.connection import Store, open_store

__all__ = ["Store", "open_store"]


def __getattr__(name: str):
    if name in __all__:
        from krate.store import connection

        return getattr(connection, name)
    raise AttributeError(f"module 'krate.store' has no attribute {name!r}")
