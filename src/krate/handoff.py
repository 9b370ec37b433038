"""A child started at entry, before the command's network lockdown, held for the command.

cli/main.py starts what must not be born inside krate's lockdown (the registry
transport of login/push, doctor's sandbox test, the proof's real runs) while
only krate and the standard library are loaded; the command takes it once.
Standard library only: it is imported before the lockdown.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """Holds one thing until it is taken; taking empties it."""

    def __init__(self) -> None:
        self._held: T | None = None

    def put(self, thing: T | None) -> None:
        self._held = thing

    def take(self) -> T | None:
        """The thing started at entry (once), or None (the in-process entry, --help)."""
        thing, self._held = self._held, None
        return thing
