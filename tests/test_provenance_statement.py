"""in-toto Statement v1 / SLSA Provenance v1: the builder's output validates, the validator bites,
and the DSSE envelope carries the exact statement bytes."""

from __future__ import annotations

import base64
import copy
import json

import pytest

from krate.provenance import dsse
from krate.provenance import statement as st

# The example from the SLSA v1 provenance spec (shortened), with the exact spec strings.
SPEC_EXAMPLE = {
    "_type": "https://in-toto.io/Statement/v1",
    "subject": [
        {"name": "hello", "digest": {"sha256": "a" * 64}},
    ],
    "predicateType": "https://slsa.dev/provenance/v1",
    "predicate": {
        "buildDefinition": {
            "buildType": "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1",
            "externalParameters": {"workflow": {"ref": "refs/heads/main", "path": "b.yml"}},
            "internalParameters": {"github": {"event_name": "push"}},
            "resolvedDependencies": [
                {
                    "uri": "git+https://github.com/octocat/hello-world@refs/heads/main",
                    "digest": {"gitCommit": "c27d339ee6075c1f744c5d4b200f7901aad2c369"},
                }
            ],
        },
        "runDetails": {
            "builder": {"id": "https://github.com/slsa-framework/slsa-github-generator@v1"},
            "metadata": {
                "invocationId": "https://github.com/octocat/hello-world/actions/runs/1/attempts/1",
                "startedOn": "2023-01-01T12:34:56Z",
                "finishedOn": "2023-01-01T12:34:56.123456789+01:00",
            },
        },
    },
}


def built() -> dict:
    return st.provenance(
        subjects=[st.descriptor(name="dist/app.tar.gz", digest={"sha256": "0" * 64})],
        build_type="https://krate.sh/build-types/local/v1",
        external_parameters={"argv": ["make"], "workingDirectory": "/w"},
        internal_parameters={"sandbox": "bubblewrap"},
        resolved_dependencies=[
            st.descriptor(name="workspace", uri="git+file:///w", digest={"gitCommit": "1" * 40})
        ],
        builder_id="https://krate.sh/builder/krate@v0.1.0",
        builder_version={"krate": "0.1.0"},
        invocation_id="01RUN",
        started_on="2026-11-01T12:00:00+00:00",
        finished_on="2026-11-01T13:00:00.5+01:00",
        byproducts=[st.descriptor(name="exitStatus", content=b"0", annotations={"exitStatus": 0})],
    )


def test_spec_example_and_our_statement_validate():
    assert st.validate(SPEC_EXAMPLE) == []
    statement = built()
    assert st.validate(statement) == []
    meta = statement["predicate"]["runDetails"]["metadata"]
    assert meta == {
        "invocationId": "01RUN",
        "startedOn": "2026-11-01T12:00:00.000000Z",
        "finishedOn": "2026-11-01T12:00:00.500000Z",
    }


def _broken(path: str, value=None, *, delete: bool = False) -> dict:
    statement = copy.deepcopy(built())
    *parents, last = path.split(".")
    node = statement
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if delete:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return statement


@pytest.mark.parametrize(
    ("path", "value", "delete", "expected"),
    [
        ("_type", None, True, "_type"),
        ("_type", "https://in-toto.io/Statement/v0.1", False, "_type must be"),
        ("subject", [], False, "non-empty"),
        ("subject.0.digest", None, True, "needs a digest"),
        ("subject.0.digest", {"sha256": "A" * 64}, False, "lowercase hex"),
        ("subject.0.digest", {"sha256": "a" * 63}, False, "63 hex digits"),
        ("predicateType", "https://slsa.dev/provenance/v1.0", False, "predicateType"),
        ("predicate.buildDefinition.buildType", None, True, "'buildType' is missing"),
        ("predicate.buildDefinition.externalParameters", None, True, "externalParameters"),
        ("predicate.buildDefinition.materials", [], False, "unknown field 'materials'"),
        ("predicate.runDetails.builder.id", None, True, "'id' is missing"),
        ("predicate.runDetails.builder.id", "not a uri", False, "must be a URI"),
        ("predicate.runDetails.metadata.buildInvocationId", "x", False, "unknown field"),
        ("predicate.runDetails.metadata.startedOn", "2026-11-01 12:00:00", False, "RFC 3339"),
        ("predicate.runDetails.metadata.finishedOn", "2026-13-45T99:00:00Z", False, "RFC 3339"),
        ("predicate.runDetails.byproducts.0", {"name": "x"}, False, "uri, digest, content"),
        ("predicate.runDetails.byproducts.0.content", "not base64!", False, "base64"),
        ("predicate.buildDefinition.resolvedDependencies.0.digest", {}, False, "non-empty"),
        ("predicate.runDetails", None, True, "'runDetails' is missing"),
    ],
)
def test_validator_rejects(path, value, delete, expected):
    problems = st.validate(_broken(path, value, delete=delete))
    assert problems, "the validator accepted a broken statement"
    assert any(expected in p for p in problems), problems


def test_encoding_is_canonical_and_stable():
    statement = built()
    shuffled = json.loads(json.dumps(statement), object_pairs_hook=lambda p: dict(reversed(p)))
    assert st.encode(shuffled) == st.encode(statement)
    text = st.encode(statement).decode()
    assert text.startswith('{"_type":"https://in-toto.io/Statement/v1"')
    assert "\n" not in text and ": " not in text


def test_dsse_envelope_is_unsigned_and_carries_the_exact_bytes():
    payload = st.encode(built())
    env = dsse.envelope(payload)
    assert env["payloadType"] == "application/vnd.in-toto+json"
    assert env["signatures"] == []
    assert base64.standard_b64decode(env["payload"]) == payload
    assert dsse.payload_of(env) == payload


def test_pae_matches_the_dsse_spec_example():
    # From the DSSE v1 protocol document.
    assert (
        dsse.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert dsse.pae("a", "ü".encode()) == b"DSSEv1 1 a 2 \xc3\xbc"
