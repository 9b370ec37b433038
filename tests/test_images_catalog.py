"""The image catalog contract: blobs first, then `add()`; rows follow the chain."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from krate.errors import KrateError
from krate.images import blobs, catalog
from krate.images.blobs import DigestMismatch
from krate.paths import Paths
from krate.store import open_store
from krate.store.record import verify as verify_record


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps(
    {
        "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"], "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
).encode()


@pytest.fixture
def paths(krate_home):
    return Paths.from_env()


def test_put_stream_refuses_a_mismatch_and_leaves_nothing(paths):
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        blobs.put_stream(paths, io.BytesIO(b"evil"), digest=_digest(b"good"), size=4)
    with pytest.raises(DigestMismatch):
        blobs.put_stream(paths, io.BytesIO(b"longer"), digest=_digest(b"longer"), size=3)
    assert list(blobs.store_of(paths).root.iterdir()) == []
    stored = blobs.put_stream(paths, io.BytesIO(b"good"), digest=_digest(b"good"), size=4)
    assert stored.digest == _digest(b"good") and blobs.has(paths, stored.digest)
    assert blobs.path(paths, stored.digest).read_bytes() == b"good"


def test_add_records_an_event_and_a_row_and_reads_the_config(paths):
    layer = blobs.put_bytes(paths, b"layer-bytes").digest
    config = blobs.put_bytes(paths, CONFIG).digest
    manifest = blobs.put_bytes(paths, b"{}").digest
    with open_store(paths) as store:
        image = catalog.add(
            store,
            ref="registry.example/app:1",
            manifest_digest=manifest,
            config_digest=config,
            layer_digests=[layer],
            source="registry",
        )
        assert image.config == {"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"], "WorkingDir": "/srv"}
        assert image.created == "2026-01-01T00:00:00Z" and image.layer_digests == [layer]
        kinds = [k for (k,) in store.conn.execute("SELECT kind FROM events")]
        assert kinds == ["image.pulled"]
        catalog.add(
            store, ref="app:local", manifest_digest=None, config_digest=config,
            layer_digests=[layer], source="rootfs",
        )  # fmt: skip
        assert catalog.resolve(store, paths, config[:19]).config_digest == config
        assert catalog.resolve(store, paths, "app:local").source == "rootfs"
        assert verify_record(store).ok
        # An index row edited behind krate's back is caught by verify.
        store.conn.execute("UPDATE images SET config_digest = 'sha256:' || hex(zeroblob(32))")
        assert not verify_record(store).ok


def test_add_refuses_blobs_not_in_the_store(paths):
    with open_store(paths) as store, pytest.raises(KrateError, match="not in the store"):
        catalog.add(
            store, ref="x:1", manifest_digest=None, config_digest=_digest(b"nope"),
            layer_digests=[], source="rootfs",
        )  # fmt: skip
        assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_short_names_resolve_like_docker():
    assert catalog.candidates("alpine") == [
        "alpine", "alpine:latest", "docker.io/library/alpine", "docker.io/library/alpine:latest"
    ]  # fmt: skip
    assert catalog.candidates("localhost:5000/a:1") == ["localhost:5000/a:1"]
