"""Image records: add (after pull or import), look up, list and remove.

`add()` is the one way an image becomes known: its manifest, config and layer blobs must
already be in the content-addressed store (images/blobs.py). It appends `image.pulled`
(source "registry") or `image.imported` (any other source) to the chain with the row.
Lookups read the config blob back through the store, re-hashed, so a run honours exactly
the config the digest names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from krate.errors import KrateError, NotFound
from krate.images import blobs
from krate.images.model import Image, parse_config
from krate.images.names import candidates, find
from krate.paths import Paths
from krate.provenance.store import split_digest
from krate.store import images as rows

if TYPE_CHECKING:
    from krate.store.connection import Store
    from krate.store.events import Writer

PULLED, IMPORTED = rows.ADDED_KINDS


def _paths_of(store: Store) -> Paths:
    if store.path is None:
        raise KrateError("the image catalog needs a writable store")
    data_dir = store.path.parent
    return Paths(data_dir, data_dir)


def add(
    conn_or_store: Store | Writer,
    *,
    ref: str,
    manifest_digest: str | None,
    config_digest: str,
    layer_digests: list[str],
    source: str,
    paths: Paths | None = None,
) -> Image:
    """Record `ref` as naming the image whose blobs are already stored; return it.

    `conn_or_store` is an open writable Store, or the Writer of a transaction already
    open. The blobs are checked to be present (the config is parsed: a bad one refuses).
    `paths` defaults to the store's own data folder.
    """
    from krate.store.events import Writer

    writer = conn_or_store if isinstance(conn_or_store, Writer) else None
    store = writer.store if writer is not None else conn_or_store
    paths = paths or _paths_of(store)
    ref = ref.strip()
    if not ref or any(c.isspace() for c in ref):
        raise KrateError(f"{ref!r} is not an image name")
    config_digest = "sha256:" + split_digest(config_digest)
    manifest_digest = "sha256:" + split_digest(manifest_digest) if manifest_digest else None
    layers = ["sha256:" + split_digest(d) for d in layer_digests]
    for digest in [config_digest, *([manifest_digest] if manifest_digest else []), *layers]:
        if not blobs.has(paths, digest):
            raise KrateError(f"blob {digest} of {ref} is not in the store; store it first")
    config = _config(paths, config_digest)
    row = rows.ImageRow(ref, config_digest, manifest_digest, layers, source, "")
    kind = PULLED if source == "registry" else IMPORTED
    if writer is not None:
        rows.put(writer, kind, row)
    else:
        with store.write() as w:
            rows.put(w, kind, row)
    found = rows.by_ref(store, ref)
    return _image(found or row, config)


def _config(paths: Paths, config_digest: str) -> tuple[dict, str | None]:
    try:
        fields, created, _ = parse_config(blobs.read_bytes(paths, config_digest))
    except ValueError as exc:
        raise KrateError(f"image config {config_digest} is not an image config: {exc}") from exc
    return fields, created


def _image(row: rows.ImageRow, config: tuple[dict, str | None]) -> Image:
    return Image(
        row.ref,
        row.config_digest,
        row.manifest_digest,
        row.layers,
        config[0],
        config[1],
        row.source,
        row.added,
    )


def load(store: Store, paths: Paths, row: rows.ImageRow) -> Image:
    return _image(row, _config(paths, row.config_digest))


def resolve(store: Store, paths: Paths, name: str) -> Image:
    row = find(store, name)
    if row is None:
        raise NotFound(f"no image {name}; see `krate image list`")
    return load(store, paths, row)


def list_images(store: Store) -> list[rows.ImageRow]:
    return rows.all_rows(store)


def remove(store: Store, name: str) -> list[rows.ImageRow]:
    """Forget the ref `name`, or every ref of the image when `name` is a config digest.

    Returns the rows removed. Blobs are left to `blobs_unreferenced()` (rm decides)."""
    row = find(store, name)
    if row is None:
        raise NotFound(f"no image {name}; see `krate image list`")
    by_digest = row.ref not in candidates(name)
    targets = rows.by_config(store, row.config_digest) if by_digest else [row]
    with store.write() as writer:
        for target in targets:
            rows.remove(writer, target)
    return targets
