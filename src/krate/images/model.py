"""The `Image` record and the parts of an OCI image config that a run honours.

A NamedTuple, not a dataclass: `krate run IMAGE` reads it on the start-up path, where
dataclasses are not imported (ARCHITECTURE.md, "Start-up budget"). It reads like a frozen
dataclass (attributes, `_replace`, `to_dict()`).
"""

from __future__ import annotations

import json

from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

# The fields of an OCI/Docker image config's "config" object a run honours, as docker run does.
RUN_FIELDS = ("Env", "WorkingDir", "Entrypoint", "Cmd", "User")


class Image(NamedTuple):
    """One name (ref) of an image whose blobs are in the store."""

    ref: str
    config_digest: str  # sha256:<hex> of the config blob: the image's identity
    manifest_digest: str | None  # None for a root filesystem import without one
    layer_digests: list[str]  # blobs, bottom layer first (gzip or plain tar)
    config: dict[str, Any]  # RUN_FIELDS present in the config (Env a list of "K=V")
    created: str | None  # the config's "created" time, as written there
    source: str = ""  # "registry", "docker-archive", "oci-layout", "rootfs"
    added: str = ""  # when krate recorded this ref (UTC, ISO 8601)

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def parse_config(raw: bytes) -> tuple[dict[str, Any], str | None, list[str]]:
    """(the honoured run fields, created, rootfs diff_ids) of an image config blob.

    Raises ValueError on anything that is not an image config."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("the image config is not a JSON object")
    section = doc.get("config") or {}
    if not isinstance(section, dict):
        raise ValueError("the image config's 'config' is not an object")
    fields: dict[str, Any] = {}
    for name in RUN_FIELDS:
        value = section.get(name)
        if value is None or value == "" or value == []:
            continue
        if name in ("Env", "Entrypoint", "Cmd"):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"the image config's {name} is not a list of strings")
        elif not isinstance(value, str):
            raise ValueError(f"the image config's {name} is not a string")
        fields[name] = value
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        diff_ids = []
    created = doc.get("created")
    return fields, created if isinstance(created, str) else None, diff_ids
