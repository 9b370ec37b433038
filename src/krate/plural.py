"""`1 event`, `2 events`: one place for counted nouns in krate's messages."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """`n` and the noun as that number needs it.

    Example: counted(1, "folder or file", "folders and files") == "1 folder or file"
    """
    return f"{n} {singular if n == 1 else plural or singular + 's'}"
