"""Shell-completion callbacks: policy names, run ids and `last`, image names.

They run at every TAB press, in a krate process that exits right after: only the
standard library and tiny krate modules here, never sqlite-utils, migrations or a
write (store/completion.py reads run ids read-only with sqlite3). They never raise:
a TAB prints suggestions or nothing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# The built-in profiles (krate.policy.builtin.PROFILES; importing the policy package
# costs ~70 ms per TAB, so the names are repeated here and a test keeps them in step).
PROFILES = {
    "strict": "built-in: no network",
    "default": "built-in: package registries only",
    "open": "built-in: any host, still recorded",
}


def policy_names(incomplete: str) -> list[tuple[str, str]]:
    """Built-in profile names, then policy files (*.toml) and folders under the typed path."""
    out = [(name, text) for name, text in PROFILES.items() if name.startswith(incomplete)]
    with contextlib.suppress(OSError):
        out.extend(_toml_paths(incomplete))
    return out


def _toml_paths(incomplete: str) -> list[tuple[str, str]]:
    folder, _, stem = incomplete.rpartition("/")
    base = Path(os.path.expanduser(folder + "/" if folder else ".") or "/")
    found = []
    for entry in sorted(base.iterdir(), key=lambda p: p.name)[:500]:
        if not entry.name.startswith(stem) or (entry.name.startswith(".") and not stem):
            continue
        shown = f"{folder}/{entry.name}" if folder else entry.name
        if entry.is_dir():
            found.append((shown + "/", "folder"))
        elif entry.suffix == ".toml":
            found.append((shown, "policy file"))
    return found


def run_refs(incomplete: str) -> list[tuple[str, str]]:
    """`last`, then the ids of the newest runs that start with what was typed."""
    out = [("last", "the newest run")] if "last".startswith(incomplete) else []
    return out + run_ids(incomplete)


def run_ids(incomplete: str) -> list[tuple[str, str]]:
    """The ids of the newest runs that start with what was typed (for options without `last`)."""
    try:
        from krate.paths import Paths
        from krate.store import completion

        return completion.run_ids(Paths.from_env(os.environ).db_path, incomplete)
    except Exception:  # a TAB must never print a traceback
        return []


def image_names(incomplete: str) -> list[tuple[str, str]]:
    """The names of the images on this machine that start with what was typed."""
    try:
        from krate.paths import Paths
        from krate.store import completion

        return completion.image_refs(Paths.from_env(os.environ).db_path, incomplete)
    except Exception:  # a TAB must never print a traceback
        return []
