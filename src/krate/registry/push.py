"""`krate push`: an artifact from the store and its provenance, as OCI artifacts.

What is pushed (all bytes deterministic, so a repeated push yields the same digests):
- blobs: the empty config `{}`, the DSSE envelope of the build's in-toto
  Statement, and the artifact file itself (streamed from the store by the transport);
- the provenance manifest (by digest): `artifactType` DSSE, the envelope as its
  layer, `subject` = the artifact manifest; made findable through the referrers
  API, or the `sha256-<hex>` referrers tag where the registry has no such API;
- last, the artifact manifest under the tag: krate's `artifactType`, the file as
  its layer with `org.opencontainers.image.title`, annotations linking the build.
  Its PUT is the commit point: nothing is recorded as pushed before it succeeded.

Events: `push.started`, then `push.finished` (with its `pushes` row, one
transaction) or `push.failed`; never credentials. Domain code: never prints,
never reads the environment, never imports a networking module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krate.errors import KrateError
from krate.registry.client import (
    Connection,
    Reference,
    Transport,
    TransportFailed,
    connection_for,
    secret_forms,
    used_plain_http,
)

if TYPE_CHECKING:
    from krate.paths import Paths
    from krate.registry.keychain import Credentials
    from krate.store.connection import Store

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BYTES = b"{}"
ARTIFACT_TYPE = "application/vnd.krate.artifact.v1"
FILE_TYPE = "application/octet-stream"
DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
PREDICATE = "in-toto.io/predicate-type"
# Uploads above CHUNK_THRESHOLD go in CHUNK_SIZE PATCHes (resumable mid-blob).
CHUNK_SIZE = 64 << 20
CHUNK_THRESHOLD = 128 << 20


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def job(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "size": self.size}
        if self.path is not None:
            out["path"] = str(self.path)
        else:
            out["data"] = base64.b64encode(self.data or b"").decode("ascii")
        return out


@dataclass(frozen=True)
class Plan:
    """Everything a push sends, computed before any connection."""

    reference: Reference
    artifact_digest: str
    artifact_name: str
    artifact_size: int
    build_id: str
    blobs: tuple[Blob, ...]
    manifest: bytes
    provenance: bytes

    @property
    def manifest_digest(self) -> str:
        return _sha(self.manifest)

    @property
    def provenance_digest(self) -> str:
        return _sha(self.provenance)

    def manifests_job(self) -> list[dict[str, Any]]:
        prov = json.loads(self.provenance)
        return [
            {
                "reference": self.provenance_digest,
                "digest": self.provenance_digest,
                "media_type": MANIFEST,
                "data": base64.b64encode(self.provenance).decode("ascii"),
                "subject": self.manifest_digest,
                "descriptor": {
                    "mediaType": MANIFEST,
                    "digest": self.provenance_digest,
                    "size": len(self.provenance),
                    "artifactType": DSSE_TYPE,
                    "annotations": prov.get("annotations", {}),
                },
            },
            {
                "reference": self.reference.tag,
                "digest": self.manifest_digest,
                "media_type": MANIFEST,
                "data": base64.b64encode(self.manifest).decode("ascii"),
            },
        ]


def plan(store: Store, paths: Paths, artifact_ref: str, reference: Reference) -> Plan:
    """Resolve ARTIFACT in the store and build the manifests (no network, no writes)."""
    from krate.provenance import dsse
    from krate.provenance.build import find_artifact
    from krate.provenance.store import ArtifactStore
    from krate.store import artifacts as rows

    artifact = find_artifact(store, artifact_ref)[0]
    build = rows.get_build(store, artifact.build_id)
    if build is None:
        raise KrateError(f"the build record of {artifact.digest} is missing; nothing was pushed")
    path = ArtifactStore(paths.artifacts_dir).path_for(artifact.digest)
    _check_stored(artifact, path)
    statement = build.statement.encode("utf-8")
    envelope = _encode(dsse.envelope(statement))
    predicate = json.loads(statement).get("predicateType", "")
    title = posixpath.basename(artifact.name) or artifact.digest.replace(":", "-")
    empty = {"mediaType": EMPTY, "digest": _sha(EMPTY_BYTES), "size": len(EMPTY_BYTES)}

    links = {
        CREATED: build.created,
        "sh.krate.build.id": build.id,
        "sh.krate.build.statement.sha256": build.statement_sha256,
    }
    if build.run_id:
        links["sh.krate.run.id"] = build.run_id
    manifest = _encode(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": empty,
            "layers": [
                {
                    "mediaType": FILE_TYPE,
                    "digest": artifact.digest,
                    "size": artifact.size,
                    "annotations": {TITLE: title},
                }
            ],
            "annotations": {TITLE: title, "sh.krate.artifact.name": artifact.name, **links},
        }
    )
    provenance = _encode(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": DSSE_TYPE,
            "config": empty,
            "layers": [
                {
                    "mediaType": DSSE_TYPE,
                    "digest": _sha(envelope),
                    "size": len(envelope),
                    "annotations": {TITLE: f"{title}.provenance.dsse.json"},
                }
            ],
            "subject": {"mediaType": MANIFEST, "digest": _sha(manifest), "size": len(manifest)},
            "annotations": {PREDICATE: predicate, **links},
        }
    )
    blobs = (
        Blob(_sha(EMPTY_BYTES), len(EMPTY_BYTES), data=EMPTY_BYTES),
        Blob(_sha(envelope), len(envelope), data=envelope),
        Blob(artifact.digest, artifact.size, path=path),
    )
    return Plan(
        reference,
        artifact.digest,
        artifact.name,
        artifact.size,
        build.id,
        blobs,
        manifest,
        provenance,
    )


def _check_stored(artifact: Any, path: Path) -> None:
    """The stored copy is there and has the recorded size (its digest is `verify`'s job)."""
    try:
        size = path.stat().st_size
    except OSError:
        raise KrateError(
            f"{artifact.digest} ({artifact.name}) is recorded but missing from the store "
            f"{path.parent}; run `krate artifacts verify`. Nothing was pushed."
        ) from None
    if size != artifact.size:
        raise KrateError(
            f"the stored copy of {artifact.digest} changed size ({size} bytes, recorded "
            f"{artifact.size}); run `krate artifacts verify`. Nothing was pushed."
        )


@dataclass
class PushResult:
    push_id: str
    reference: str
    manifest_digest: str
    provenance_digest: str
    referrers: str | None
    uploaded: list[str]
    present: list[str]
    bytes_sent: int
    duration_s: float
    plain_http: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def push(
    transport: Transport,
    *,
    store: Store,
    open_store: Callable[[], Any],
    plan: Plan,
    credentials: Credentials | None,
    plain_http: bool = False,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PushResult:
    """Run the push through the started transport; record started, then finished or failed."""
    from krate.store import events

    ref = plan.reference
    connection = connection_for(ref.registry, plain_http)
    push_id = secrets.token_hex(8)
    base = {
        "push_id": push_id,
        "registry": ref.registry,
        "repository": ref.repository,
        "tag": ref.tag,
        "artifact": plan.artifact_digest,
        "name": plan.artifact_name,
        "size": plan.artifact_size,
        "manifest": plan.manifest_digest,
        "provenance": plan.provenance_digest,
    }
    events.append(
        store,
        "push.started",
        {
            **base,
            "scheme": connection.scheme,
            "user": credentials.username if credentials else None,
        },
    )
    started = clock()
    secret = secret_forms(credentials.username, credentials.password) if credentials else ()
    try:
        done = transport.run(
            _job(plan, connection, credentials),
            open_store=open_store,
            command="krate push",
            on_message=on_message,
            secrets=secret,
        )
    except BaseException as exc:
        _record_failed(store, base, exc, transport.messages, round(clock() - started, 3))
        if isinstance(exc, TransportFailed):
            raise KrateError(
                f"push to {ref} failed: {exc}; nothing was recorded as pushed"
            ) from None
        raise
    messages = transport.messages
    result = PushResult(
        push_id=push_id,
        reference=str(ref),
        manifest_digest=plan.manifest_digest,
        provenance_digest=plan.provenance_digest,
        referrers=next((m.get("via") for m in messages if m.get("type") == "referrers"), None),
        uploaded=_blobs(messages, "uploaded"),
        present=_blobs(messages, "present"),
        bytes_sent=int(done.get("sent", 0)),
        duration_s=round(clock() - started, 3),
        plain_http=used_plain_http(connection, messages),
    )
    _record_finished(store, plan, base, result, done.get("auth"))
    return result


def _job(plan: Plan, connection: Connection, credentials: Credentials | None) -> dict[str, Any]:
    """The transport's job (credentials included: it travels only on the helper's stdin)."""
    ref = plan.reference
    return {
        "op": "push",
        "registry": ref.registry,
        "scheme": connection.scheme,
        "http_fallback": connection.http_fallback,
        "repository": ref.repository,
        "username": credentials.username if credentials else None,
        "password": credentials.password if credentials else None,
        "blobs": [b.job() for b in plan.blobs],
        "manifests": plan.manifests_job(),
        "chunk_size": CHUNK_SIZE,
        "chunk_threshold": CHUNK_THRESHOLD,
    }


def _record_failed(
    store: Store,
    base: dict[str, Any],
    exc: BaseException,
    messages: list[dict[str, Any]],
    duration_s: float,
) -> None:
    from krate.store import events

    sent = sum(int(m.get("sent", 0)) for m in messages if m.get("type") == "blob")
    code = (
        exc.code
        if isinstance(exc, TransportFailed)
        else ("interrupted" if isinstance(exc, KeyboardInterrupt) else "error")
    )
    reason = str(exc) if isinstance(exc, KrateError) else type(exc).__name__
    events.append(
        store,
        "push.failed",
        {
            **base,
            "error": code,
            "reason": reason,
            "uploaded": _blobs(messages, "uploaded"),
            "bytes": sent,
            "duration_s": duration_s,
        },
    )


def _record_finished(
    store: Store, plan: Plan, base: dict[str, Any], result: PushResult, auth: Any
) -> None:
    """`push.finished` and the pushes row, in one write."""
    from krate.store import pushes as rows

    ref = plan.reference
    with store.write() as writer:
        event = writer.append(
            "push.finished",
            {
                **base,
                "referrers": result.referrers,
                "uploaded": result.uploaded,
                "present": result.present,
                "bytes": result.bytes_sent,
                "duration_s": result.duration_s,
                "plain_http": result.plain_http,
                "auth": auth,
            },
        )
        rows.insert(
            writer,
            rows.PushRow(
                push_id=result.push_id,
                artifact_digest=plan.artifact_digest,
                name=plan.artifact_name,
                registry=ref.registry,
                repository=ref.repository,
                tag=ref.tag,
                manifest_digest=plan.manifest_digest,
                provenance_digest=plan.provenance_digest,
                referrers=result.referrers,
                bytes_sent=result.bytes_sent,
                pushed_at=event.ts,
            ),
        )


def _blobs(messages: list[dict[str, Any]], status: str) -> list[str]:
    return [
        str(m["digest"]) for m in messages if m.get("type") == "blob" and m.get("status") == status
    ]
