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
import stat


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


class Resolver:
    """`resolve` for the many paths of one compile, each folder on the way looked up once.

    realpath(folder/name) is realpath(folder)/name unless `name` is itself a symlink, so
    one lstat per path plus the memoised folders gives realpath's answer: the built-in
    lists name a hundred paths under a handful of folders, and plain realpath costs a
    lstat per component of each on every run. Make one per compile: the memo assumes the
    filesystem does not change while it is used.
    """

    def __init__(self) -> None:
        self.memo: dict[str, str] = {"/": "/"}
        self.present: dict[str, bool] = {}  # resolved path -> whether the lookup found it

    def exists(self, resolved: str) -> bool:
        """Whether a path this resolver returned exists (known from its lookup when it can)."""
        known = self.present.get(resolved)
        return os.path.exists(resolved) if known is None else known

    def __call__(self, path: str) -> str:
        found = self.memo.get(path)
        if found is not None:
            return found
        if not path.startswith("/") or posixpath.normpath(path) != path:
            result = resolve(path)
            self.memo[path] = result
            return result
        return self._real(path)

    def _real(self, path: str) -> str:
        """realpath of an absolute, normalised path (so its folders are too)."""
        found = self.memo.get(path)
        if found is not None:
            return found
        folder, name = path.rsplit("/", 1)
        base = self._real(folder or "/")
        joined = ("" if base == "/" else base) + "/" + name
        link = found_here = False
        if self.present.get(base) is not False:  # in a missing folder nothing exists
            try:
                link = stat.S_ISLNK(os.lstat(joined).st_mode)
                found_here = True
            except (OSError, ValueError):
                pass
        if link:
            result = resolve(joined)
        else:
            result = joined
            self.present[result] = found_here
        self.memo[path] = result
        return result


def under(path: str, root: str) -> bool:
    """Is `path` the same as `root` or inside it, by whole components?

    A built-in `root` may end in a glob (`~/.cargo/credentials*`): its last component
    is then matched as a pattern. Policy files cannot write `*` (check_text).
    """
    if root == "/":
        return True
    if "*" in root:
        return _under_glob(path, root)
    return path == root or path.startswith(root + "/")


def _under_glob(path: str, root: str) -> bool:
    folder, pattern = root.rsplit("/", 1)
    if not path.startswith(folder + "/"):
        return False
    return glob_match(path[len(folder) + 1 :].split("/", 1)[0], pattern)


def glob_match(name: str, pattern: str) -> bool:
    """Does `name` match `pattern`, where only `*` is special (any run of characters)?

    Not fnmatch: that would also read `?` and `[` as patterns (both can be in real file
    names) and compile a regular expression on every run.
    """
    parts = pattern.split("*")
    head, tail = parts[0], parts[-1]
    if len(parts) == 1:
        return name == pattern
    if len(name) < len(head) + len(tail) or not (name.startswith(head) and name.endswith(tail)):
        return False
    pos, end = len(head), len(name) - len(tail)
    for part in parts[1:-1]:
        found = name.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


def expand(path: str) -> list[str]:
    """The existing paths a glob entry names now (sorted); a plain path as it is."""
    if "*" not in path:
        return [path]
    folder, _ = path.rsplit("/", 1)
    try:
        with os.scandir(folder or "/") as entries:
            names = [e.name for e in entries]
    except OSError:
        return []
    return sorted(f"{folder}/{n}" for n in names if _under_glob(f"{folder}/{n}", path))


def display(path: str, home: str) -> str:
    """Show paths inside home with `~`, as users write them."""
    if home != "/" and under(path, home):
        return "~" + path[len(home) :]
    return path
