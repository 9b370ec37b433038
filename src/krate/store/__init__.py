"""The only package that talks SQL: the SQLite store, its migrations and the event chain."""

from krate.store.connection import Store, open_store

__all__ = ["Store", "open_store"]
