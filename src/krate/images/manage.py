"""What `krate image rm|show|verify` do beyond the catalog: blobs and unpacked roots.

`rm` forgets names, then deletes only the blobs nothing else needs: another image, a
stored artifact, or a build record that names the digest (a build's resolvedDependencies)
keeps a blob. The unpacked root goes when no name points at its image any more.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from krate.images import blobs, catalog, roots
from krate.paths import Paths
from krate.store import images as rows


def remove(store, paths: Paths, names: list[str]) -> dict[str, Any]:
    removed: list[rows.ImageRow] = []
    for name in names:
        removed.extend(catalog.remove(store, name))
    wanted: set[str] = set()
    for row in removed:
        wanted.add(row.config_digest)
        if row.manifest_digest:
            wanted.add(row.manifest_digest)
        wanted.update(row.layers)
    still = rows.referenced_digests(store)
    kept = (wanted & still) | rows.kept_by_records(store, wanted - still)
    for row in removed:  # a build ran on it: keep the whole image its record names
        if row.config_digest in kept:
            kept.update(d for d in (row.manifest_digest, *row.layers) if d)
    deleted = []
    for digest in sorted(wanted - kept):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(blobs.path(paths, digest))
            deleted.append(digest)
    roots_removed = []
    for config in {row.config_digest for row in removed}:
        if not rows.by_config(store, config) and roots.remove(paths, config):
            roots_removed.append(config)
    return {
        "removed": [row.ref for row in removed],
        "blobs_deleted": deleted,
        "blobs_kept": sorted(kept),
        "roots_removed": roots_removed,
    }


def describe(store, paths: Paths, name: str) -> dict[str, Any]:
    image = catalog.resolve(store, paths, name)
    others = [r.ref for r in rows.by_config(store, image.config_digest) if r.ref != image.ref]
    root = roots.rootfs_of(paths, image.config_digest)
    meta = roots.meta(paths, image.config_digest) or {}
    out = image.to_dict()
    out.update(
        {
            "other_refs": others,
            "rootfs": str(root) if root else None,
            "skipped": meta.get("skipped", []),
            "stripped": meta.get("stripped", []),
        }
    )
    return out


def verify(store, paths: Paths, name: str | None) -> list[dict[str, Any]]:
    """Per image: blobs re-hashed, and the unpacked root against a fresh unpack."""
    targets = [catalog.find(store, name)] if name else rows.all_rows(store)
    if name and targets[0] is None:
        catalog.resolve(store, paths, name)  # raises NotFound with the usual message
    results = []
    checked_roots: dict[str, list[str]] = {}
    store_ = blobs.store_of(paths)
    for row in targets:
        assert row is not None
        problems = []
        digests = [row.config_digest, *([row.manifest_digest] if row.manifest_digest else [])]
        for digest in [*digests, *row.layers]:
            wrong = store_.check(digest)
            if wrong:
                problems.append(f"blob {digest}: {wrong}")
        if not problems:
            if row.config_digest not in checked_roots:
                image = catalog.load(store, paths, row)
                checked_roots[row.config_digest] = roots.verify(paths, image)
            problems += [f"unpacked root: {p}" for p in checked_roots[row.config_digest]]
        results.append({"ref": row.ref, "config_digest": row.config_digest, "problems": problems})
    return results
