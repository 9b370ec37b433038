"""Path rules: validating what a policy file may name, normalising, and whole-component matching.

`~` expands to the given home, relative paths are anchored at the layer's folder,
`..` is folded lexically, and symlinks are resolved once when a policy is
compiled (`resolve`). Matching compares whole components: `~/.ssh` covers
`~/.ssh/id_rsa` but never `~/.sshfoo`. The matching functions here never touch
the filesystem; only `resolve` does, and only at compile time.
"""

from __future__ import annotations

import os
import posixpath


def check_text(text: str) -> str | None:
    """Why a path written in a policy is unusable, or None when it is fine."""
    if not text.strip():
        return "empty path"
    if "\x00" in text:
        return "path contains a NUL character"
    if "*" in text:
        return f"`{text}`: globs are not supported; name the file or folder itself"
    if text.startswith("~") and text != "~" and not text.startswith("~/"):
        return f"`{text}`: only `~` and `~/...` are supported (not ~user)"
    if len(text) > 4096:
        return "path longer than 4096 characters"
    return None


def normalize(text: str, *, home: str, base: str) -> str:
    """Absolute, `~`-expanded, `..`-folded path text; pure (no filesystem access)."""
    if text == "~":
        text = home
    elif text.startswith("~/"):
        text = home + text[1:]
    if not text.startswith("/"):
        text = base + "/" + text
    text = posixpath.normpath(text)
    if text.startswith("//"):
        text = "/" + text.lstrip("/")
    return text


def resolve(path: str) -> str:
    """Follow symlinks in an absolute normalised path (the only function here that does I/O)."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return path


def under(path: str, root: str) -> bool:
    """Is `path` the same as `root` or inside it, by whole components?"""
    if root == "/":
        return True
    return path == root or path.startswith(root + "/")


def display(path: str, home: str) -> str:
    """Show paths inside home with `~`, as users write them."""
    if home != "/" and under(path, home):
        return "~" + path[len(home) :]
    return path
