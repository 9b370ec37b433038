"""in-toto Statement v1 with an SLSA Provenance v1 predicate: building, encoding, checking.

Why our own validator: the official bindings (PyPI `in-toto-attestation`) pull in
protobuf for what is a short list of field rules; `validate()` enforces the same
rules (required fields, no unknown field names, lowercase hex digests, RFC 3339
timestamps, descriptors with a uri, digest or content) and tests use it. The
encoding is canonical JSON so a record hashes the same every time it is printed.
Never put environment values, workload output or credentials in a statement.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from krate import canonical

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"

_STATEMENT_FIELDS = {"_type", "subject", "predicateType", "predicate"}
_PREDICATE_FIELDS = {"buildDefinition", "runDetails"}
_BUILD_DEFINITION_FIELDS = {
    "buildType",
    "externalParameters",
    "internalParameters",
    "resolvedDependencies",
}
_RUN_DETAILS_FIELDS = {"builder", "metadata", "byproducts"}
_BUILDER_FIELDS = {"id", "version", "builderDependencies"}
_METADATA_FIELDS = {"invocationId", "startedOn", "finishedOn"}
_DESCRIPTOR_FIELDS = {
    "name",
    "uri",
    "digest",
    "content",
    "downloadLocation",
    "mediaType",
    "annotations",
}
# Lengths of the digest algorithms in-toto names; others need only be lowercase hex.
_DIGEST_HEX_LENGTHS = {
    "sha256": (64,),
    "sha224": (56,),
    "sha384": (96,),
    "sha512": (128,),
    "sha512_224": (56,),
    "sha512_256": (64,),
    "sha3_224": (56,),
    "sha3_256": (64,),
    "sha3_384": (96,),
    "sha3_512": (128,),
    "sha1": (40,),
    "md5": (32,),
    "gitCommit": (40, 64),
    "gitTree": (40, 64),
    "gitBlob": (40, 64),
    "gitTag": (40, 64),
}
_LOWER_HEX = re.compile(r"^[0-9a-f]+$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def encode(statement: Mapping[str, Any]) -> bytes:
    """Canonical bytes: sorted keys, no spaces, UTF-8. What is stored, hashed and enveloped."""
    return canonical.encode(statement)


def rfc3339(moment: datetime | str) -> str:
    """UTC, `Z`, microseconds: `2026-11-01T12:00:00.000000Z`. Accepts a datetime or ISO text."""
    if isinstance(moment, str):
        text = moment.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def descriptor(
    *,
    name: str | None = None,
    uri: str | None = None,
    digest: Mapping[str, str] | None = None,
    content: bytes | None = None,
    media_type: str | None = None,
    annotations: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An in-toto ResourceDescriptor with only the fields given."""
    out: dict[str, Any] = {}
    if name is not None:
        out["name"] = name
    if uri is not None:
        out["uri"] = uri
    if digest is not None:
        out["digest"] = dict(digest)
    if content is not None:
        out["content"] = base64.standard_b64encode(content).decode("ascii")
    if media_type is not None:
        out["mediaType"] = media_type
    if annotations is not None:
        out["annotations"] = dict(annotations)
    return out


def provenance(
    *,
    subjects: Sequence[Mapping[str, Any]],
    build_type: str,
    external_parameters: Mapping[str, Any],
    internal_parameters: Mapping[str, Any] | None,
    resolved_dependencies: Sequence[Mapping[str, Any]],
    builder_id: str,
    builder_version: Mapping[str, str] | None,
    invocation_id: str,
    started_on: datetime | str,
    finished_on: datetime | str,
    byproducts: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """A Statement v1 whose predicate is SLSA Provenance v1; empty optional parts left out."""
    build_definition: dict[str, Any] = {
        "buildType": build_type,
        "externalParameters": dict(external_parameters),
    }
    if internal_parameters:
        build_definition["internalParameters"] = dict(internal_parameters)
    if resolved_dependencies:
        build_definition["resolvedDependencies"] = [dict(d) for d in resolved_dependencies]
    builder: dict[str, Any] = {"id": builder_id}
    if builder_version:
        builder["version"] = dict(builder_version)
    run_details: dict[str, Any] = {
        "builder": builder,
        "metadata": {
            "invocationId": invocation_id,
            "startedOn": rfc3339(started_on),
            "finishedOn": rfc3339(finished_on),
        },
    }
    if byproducts:
        run_details["byproducts"] = [dict(b) for b in byproducts]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [dict(s) for s in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"buildDefinition": build_definition, "runDetails": run_details},
    }


def validate(statement: Any) -> list[str]:
    """Every way `statement` breaks in-toto Statement v1 / SLSA Provenance v1 (empty = valid)."""
    problems: list[str] = []
    if not _object(statement, "statement", problems):
        return problems
    _fields(
        statement, "statement", _STATEMENT_FIELDS, {"_type", "subject", "predicateType"}, problems
    )
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"_type must be {STATEMENT_TYPE!r}, not {statement.get('_type')!r}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        problems.append("subject must be a non-empty list")
    else:
        for i, subject in enumerate(subjects):
            where = f"subject[{i}]"
            _descriptor(subject, where, problems)
            if isinstance(subject, dict) and not subject.get("digest"):
                problems.append(f"{where}: a subject needs a digest")
    if statement.get("predicateType") != PREDICATE_TYPE:
        problems.append(
            f"predicateType must be {PREDICATE_TYPE!r}, not {statement.get('predicateType')!r}"
        )
        return problems
    predicate = statement.get("predicate")
    if not _object(predicate, "predicate", problems):
        return problems
    _fields(predicate, "predicate", _PREDICATE_FIELDS, _PREDICATE_FIELDS, problems)
    definition = predicate.get("buildDefinition")
    if _object(definition, "buildDefinition", problems):
        _fields(
            definition,
            "buildDefinition",
            _BUILD_DEFINITION_FIELDS,
            {"buildType", "externalParameters"},
            problems,
        )
        _uri(definition.get("buildType"), "buildDefinition.buildType", problems)
        if "externalParameters" in definition:
            _object(
                definition["externalParameters"], "buildDefinition.externalParameters", problems
            )
        if "internalParameters" in definition:
            _object(
                definition["internalParameters"], "buildDefinition.internalParameters", problems
            )
        _descriptors(definition, "resolvedDependencies", "buildDefinition", problems)
    details = predicate.get("runDetails")
    if _object(details, "runDetails", problems):
        _fields(details, "runDetails", _RUN_DETAILS_FIELDS, {"builder"}, problems)
        builder = details.get("builder")
        if _object(builder, "runDetails.builder", problems):
            _fields(builder, "runDetails.builder", _BUILDER_FIELDS, {"id"}, problems)
            _uri(builder.get("id"), "runDetails.builder.id", problems)
            version = builder.get("version")
            if version is not None and (
                not isinstance(version, dict)
                or not all(isinstance(v, str) for v in version.values())
            ):
                problems.append("runDetails.builder.version must map names to strings")
            _descriptors(builder, "builderDependencies", "runDetails.builder", problems)
        metadata = details.get("metadata")
        if metadata is not None and _object(metadata, "runDetails.metadata", problems):
            _fields(metadata, "runDetails.metadata", _METADATA_FIELDS, set(), problems)
            if "invocationId" in metadata and not isinstance(metadata["invocationId"], str):
                problems.append("runDetails.metadata.invocationId must be a string")
            for key in ("startedOn", "finishedOn"):
                if key in metadata:
                    _timestamp(metadata[key], f"runDetails.metadata.{key}", problems)
        _descriptors(details, "byproducts", "runDetails", problems)
    return problems


def _object(value: Any, where: str, problems: list[str]) -> bool:
    if isinstance(value, dict):
        return True
    problems.append(f"{where} must be an object" if value is not None else f"{where} is missing")
    return False


def _fields(
    obj: dict, where: str, allowed: set[str], required: set[str], problems: list[str]
) -> None:
    for key in sorted(set(obj) - allowed):
        problems.append(f"{where}: unknown field {key!r}")
    for key in sorted(required - set(obj)):
        problems.append(f"{where}: required field {key!r} is missing")


def _uri(value: Any, where: str, problems: list[str]) -> None:
    if value is None:
        return  # reported as missing already
    if not isinstance(value, str) or not _URI.match(value):
        problems.append(f"{where} must be a URI, not {value!r}")


def _timestamp(value: Any, where: str, problems: list[str]) -> None:
    ok = isinstance(value, str) and bool(_RFC3339.match(value))
    if ok:
        try:
            rfc3339(_trim_nanos(value))
        except ValueError:
            ok = False
    if not ok:
        problems.append(f"{where} must be an RFC 3339 timestamp, not {value!r}")


def _trim_nanos(value: str) -> str:
    """datetime parses at most microseconds; RFC 3339 allows any number of digits."""
    return re.sub(r"(\.\d{6})\d+", r"\1", value)


def _descriptors(obj: dict, key: str, where: str, problems: list[str]) -> None:
    if key not in obj:
        return
    items = obj[key]
    if not isinstance(items, list):
        problems.append(f"{where}.{key} must be a list")
        return
    for i, item in enumerate(items):
        _descriptor(item, f"{where}.{key}[{i}]", problems)


def _descriptor(value: Any, where: str, problems: list[str]) -> None:
    if not _object(value, where, problems):
        return
    _fields(value, where, _DESCRIPTOR_FIELDS, set(), problems)
    if not any(value.get(k) for k in ("uri", "digest", "content")):
        problems.append(f"{where}: needs at least one of uri, digest, content")
    for key in ("name", "uri", "downloadLocation", "mediaType"):
        if key in value and not isinstance(value[key], str):
            problems.append(f"{where}.{key} must be a string")
    if "uri" in value:
        _uri(value["uri"], f"{where}.uri", problems)
    if "digest" in value:
        digest = value["digest"]
        if not isinstance(digest, dict) or not digest:
            problems.append(f"{where}.digest must be a non-empty object")
        else:
            for alg, hexd in digest.items():
                if not isinstance(hexd, str) or not _LOWER_HEX.match(hexd):
                    problems.append(f"{where}.digest.{alg} must be lowercase hex, not {hexd!r}")
                elif alg in _DIGEST_HEX_LENGTHS and len(hexd) not in _DIGEST_HEX_LENGTHS[alg]:
                    problems.append(f"{where}.digest.{alg} has {len(hexd)} hex digits")
    if "content" in value:
        try:
            base64.b64decode(value["content"].encode("ascii"), validate=True)
        except (AttributeError, UnicodeEncodeError, binascii.Error):
            problems.append(f"{where}.content must be base64")
    if "annotations" in value and not isinstance(value["annotations"], dict):
        problems.append(f"{where}.annotations must be an object")
