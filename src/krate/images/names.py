"""Which image a name means, as docker reads names (light: `krate run IMAGE` uses it).

`alpine` is also `alpine:latest`, `docker.io/library/alpine` and
`docker.io/library/alpine:latest`; a config digest or a unique prefix of one (`sha256:ab12…`
or bare hex, 6 digits or more) names the image itself.
"""

from __future__ import annotations

import re

from krate.errors import KrateError
from krate.store import images as rows

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.store.connection import Store

_HEX_PREFIX = re.compile(r"^(sha256:)?[0-9a-f]{6,64}$")


def candidates(name: str) -> list[str]:
    """The refs `name` may mean, in the order they are tried."""
    out = [name]
    last = name.rsplit("/", 1)[-1]
    tagged = "@" in name or ":" in last
    if not tagged:
        out.append(f"{name}:latest")
    first = name.split("/", 1)[0] if "/" in name else ""
    if not ("." in first or ":" in first or first == "localhost"):
        full = f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"
        out.append(full)
        if not tagged:
            out.append(f"{full}:latest")
    return out


def find(store: Store, name: str) -> rows.ImageRow | None:
    """The row `name` means: a ref (docker's short forms too) or a config digest (prefix)."""
    for ref in candidates(name):
        row = rows.by_ref(store, ref)
        if row is not None:
            return row
    text = name.lower()
    if _HEX_PREFIX.match(text):
        prefix = text if text.startswith("sha256:") else f"sha256:{text}"
        found = rows.configs_with_prefix(store, prefix)
        if len(found) > 1:
            raise KrateError(f"{name} matches {len(found)} images; give more digits")
        if found:
            return rows.by_config(store, found[0])[0]
    return None
