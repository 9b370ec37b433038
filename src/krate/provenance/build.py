"""Recording a build: before the run, pin its inputs; after it, store outputs and provenance.

`prepare()` runs before the workload (it hashes `--input` files and reads the git
state, which the build may change); `record()` runs after it: on success it
stores every output in the content-addressed store, writes the in-toto / SLSA
statement and, in one transaction, the builds/artifacts rows with their
`build.recorded` / `artifact.stored` events. A failed run records only a
`build.failed` event and no artifacts. Never prints; never reads the environment
(the caller passes what git needs); stores no environment values or output.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krate import __version__, ids
from krate.errors import KrateError, NotFound, UsageError
from krate.printable import printable
from krate.provenance import statement as st
from krate.provenance.collect import Output, collect, match_inputs
from krate.provenance.git import GitState, workspace_state
from krate.provenance.store import ArtifactStore, Stored, hash_file, split_digest

if TYPE_CHECKING:
    from krate.paths import Paths
    from krate.store.artifacts import ArtifactRow, BuildRow
    from krate.store.connection import Store

BUILD_TYPE = "https://krate.sh/build-types/local/v1"
BUILDER_ID = f"https://krate.sh/builder/krate@v{__version__}"


@dataclass(frozen=True)
class Input:
    name: str
    hex: str


@dataclass(frozen=True)
class Prepared:
    """What is pinned before the workload runs."""

    workdir: Path
    outs: tuple[str, ...]
    input_globs: tuple[str, ...]
    name: str | None
    inputs: tuple[Input, ...]
    git: GitState | None


@dataclass(frozen=True)
class RunFacts:
    """What the run reports back; `argv` must already be redacted."""

    run_id: str
    argv: Sequence[str]
    started_on: datetime | str
    finished_on: datetime | str
    exit_status: int
    backend: str
    status: str = "finished"
    policy_name: str | None = None
    policy_sha256: str | None = None
    decisions: Mapping[str, Any] = field(default_factory=dict)
    sandbox: Mapping[str, Any] = field(default_factory=dict)
    # The OCI image the build ran on (ref, config and manifest digests), None on the host's.
    image: Mapping[str, Any] | None = None


@dataclass
class BuildResult:
    build: BuildRow | None
    artifacts: list[ArtifactRow]
    new_blobs: int = 0
    skipped: list[str] = field(default_factory=list)
    failed_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "build": self.build.summary() if self.build else None,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "new_blobs": self.new_blobs,
            "skipped": self.skipped,
            "failed": self.failed_reason,
        }


def new_build_id(now: datetime) -> str:
    """16 characters sortable by time, like run ids (krate/ids.py)."""
    return ids.new_id(int(now.timestamp() * 1000))


def prepare(
    *,
    workdir: Path,
    outs: Sequence[str],
    input_globs: Sequence[str] = (),
    name: str | None = None,
    environ: Mapping[str, str],
) -> Prepared:
    """Check the options and pin the inputs; raises before anything runs if they are wrong."""
    if not outs:
        raise UsageError("name at least one output with --out PATH (a file or a folder)")
    if name is not None and not name.strip():
        raise UsageError("--name must not be empty")
    inputs = tuple(Input(o.name, hash_file(o.path)[0]) for o in match_inputs(input_globs, workdir))
    return Prepared(
        workdir=workdir,
        outs=tuple(outs),
        input_globs=tuple(input_globs),
        name=printable(name),
        inputs=inputs,
        git=workspace_state(workdir, environ),
    )


def image_dependency(image: Mapping[str, Any]) -> dict[str, Any]:
    """The image a build ran on, by config digest (its identity; a `docker save` copy of the
    same image has another manifest digest), with its name and manifest digest."""
    notes = {"ref": image["ref"]}
    if image.get("manifest"):
        notes["manifestDigest"] = image["manifest"]
    return st.descriptor(
        name="image",
        uri=f"oci-image:{image['ref']}",
        digest={"sha256": str(image["config"]).split(":", 1)[-1]},
        media_type="application/vnd.oci.image.config.v1+json",
        annotations=notes,
    )


def statement_for(prepared: Prepared, facts: RunFacts, subjects: Sequence[tuple[str, str]]) -> dict:
    """The in-toto Statement v1 / SLSA Provenance v1 record of one build."""
    external: dict[str, Any] = {
        "argv": list(facts.argv),
        "workingDirectory": str(prepared.workdir),
        "outputs": list(prepared.outs),
    }
    if prepared.input_globs:
        external["inputs"] = list(prepared.input_globs)
    if prepared.name:
        external["name"] = prepared.name
    if facts.policy_name or facts.policy_sha256:
        policy = {"name": facts.policy_name}
        if facts.policy_sha256:
            policy["sha256"] = facts.policy_sha256
        external["policy"] = policy
    internal: dict[str, Any] = {"sandbox": facts.backend, **dict(facts.sandbox)}
    deps: list[dict[str, Any]] = []
    if prepared.git:
        deps.append(
            st.descriptor(
                name="workspace",
                uri="git+file://" + Path(prepared.git.toplevel).as_posix(),
                digest={"gitCommit": prepared.git.commit},
                annotations={"dirty": prepared.git.dirty},
            )
        )
    if facts.image:
        deps.append(image_dependency(facts.image))
    deps += [st.descriptor(name=i.name, digest={"sha256": i.hex}) for i in prepared.inputs]
    decisions = dict(facts.decisions)
    byproducts = [
        st.descriptor(
            name="exitStatus",
            content=str(facts.exit_status).encode(),
            media_type="text/plain",
            annotations={"exitStatus": facts.exit_status},
        ),
        st.descriptor(
            name="policyDecisions",
            content=st.encode(decisions),
            media_type="application/json",
            annotations=decisions,
        ),
    ]
    return st.provenance(
        subjects=[st.descriptor(name=n, digest={"sha256": h}) for n, h in subjects],
        build_type=BUILD_TYPE,
        external_parameters=external,
        internal_parameters=internal,
        resolved_dependencies=deps,
        builder_id=BUILDER_ID,
        builder_version={"krate": __version__},
        invocation_id=facts.run_id,
        started_on=facts.started_on,
        finished_on=facts.finished_on,
        byproducts=byproducts,
    )


def record(store: Store, paths: Paths, prepared: Prepared, facts: RunFacts) -> BuildResult:
    """After the run: store outputs and the build record, or record why there is none.

    Raises KrateError (exit 1) when the command succeeded but left no file under --out.
    """
    from krate.store import artifacts as rows
    from krate.store.events import format_ts

    if facts.exit_status != 0 or facts.status != "finished":
        reason = f"the command exited with status {facts.exit_status}"
        if facts.status != "finished":
            reason = f"the run {facts.status} (exit status {facts.exit_status})"
        _failed(store, prepared, facts, reason)
        return BuildResult(None, [], failed_reason=reason)
    try:
        found = collect(prepared.outs, prepared.workdir)
    except KrateError as exc:
        _failed(store, prepared, facts, str(exc))
        raise
    if not found.files:
        reason = "no file under " + ", ".join(f"--out {o}" for o in prepared.outs)
        _failed(store, prepared, facts, reason)
        raise KrateError(
            f"the build succeeded but left {reason}; check the --out paths "
            "(symbolic links are not collected)"
        )
    blobs = ArtifactStore(paths.artifacts_dir)
    blobs.sweep_temps()
    stored = [(printable(out.name), _store_output(blobs, out)) for out in found.files]
    statement = printable(statement_for(prepared, facts, [(n, s.hex) for n, s in stored]))
    problems = st.validate(statement)
    if problems:  # a bug of ours, never the user's: refuse to record an invalid statement
        raise RuntimeError("invalid provenance statement: " + "; ".join(problems))
    payload = st.encode(statement)
    statement_sha256 = hashlib.sha256(payload).hexdigest()
    new = [rows.NewArtifact(s.digest, s.size, n, s.new) for n, s in stored]
    with store.write() as writer:
        now = store.clock()
        build = rows.BuildRow(
            id=new_build_id(now),
            run_id=facts.run_id,
            name=prepared.name,
            created=format_ts(now),
            exit_status=facts.exit_status,
            workdir=printable(str(prepared.workdir)),
            subjects=len(stored),
            statement=payload.decode("utf-8"),
            statement_sha256=statement_sha256,
        )
        rows.insert_build(writer, build, new)
        for a in new:
            writer.append(
                "artifact.stored",
                {
                    "digest": a.digest,
                    "size": a.size,
                    "name": a.name,
                    "build_id": build.id,
                    "new": a.new,
                },
                run_id=facts.run_id,
            )
        writer.append(
            "build.recorded",
            {
                "build_id": build.id,
                "name": prepared.name,
                "subjects": sorted({a.digest for a in new}),
                "statement_sha256": statement_sha256,
            },
            run_id=facts.run_id,
        )
    return BuildResult(
        build,
        rows.artifacts_of_build(store, build.id),
        new_blobs=sum(1 for a in new if a.new),
        skipped=found.skipped,
    )


def _store_output(blobs: ArtifactStore, output: Output) -> Stored:
    fd = output.open()
    try:
        return blobs.put_fd(fd)
    finally:
        os.close(fd)


def _failed(store: Store, prepared: Prepared, facts: RunFacts, reason: str) -> None:
    from krate.store import events

    events.append(
        store,
        "build.failed",
        printable({"name": prepared.name, "exit_status": facts.exit_status, "reason": reason}),
        run_id=facts.run_id,
    )


def run_build(
    paths: Paths,
    policy: Any,
    request: Any,
    *,
    outs: Sequence[str],
    input_globs: Sequence[str] = (),
    name: str | None = None,
) -> tuple[Any, BuildResult]:
    """`krate build`: pin inputs, run the command exactly as `krate run` does, record the build.

    `request` is a `krate.runs.RunRequest`. Returns the run's result and the build's;
    refusals before the command starts raise from `krate.runs.execute` as for a run.
    What the statement says about the run (redacted argv, times, backend, policy,
    decision counts) is read back from the run's own record, so both always agree.
    """
    from krate.runs import execute
    from krate.store import open_store
    from krate.store import runs as runs_store

    prepared = prepare(
        workdir=request.cwd,
        outs=outs,
        input_globs=input_globs,
        name=name,
        environ=request.environ,
    )
    result = execute(paths, policy, request)
    with open_store(paths) as store:
        row = runs_store.get_run(store, result.run_id)
        if row is None or row.finished is None:
            raise KrateError(f"the record of run {result.run_id} is incomplete; see krate runs")
        sandbox: dict[str, Any] = {"workspace": row.workspace}
        if result.stripped:
            sandbox["environmentStripped"] = sorted(result.stripped)  # names only, never values
        if result.hidden:
            sandbox["hidden"] = list(result.hidden)
        facts = RunFacts(
            run_id=row.id,
            argv=list(row.argv),  # already redacted by the run record
            started_on=row.started,
            finished_on=row.finished,
            exit_status=result.exit_code,
            backend=row.backend,
            status=result.status,
            policy_name=row.policy_name,
            policy_sha256=row.policy_hash,
            decisions={"allowed": row.allowed, "denied": row.denied},
            sandbox=sandbox,
            image=request.image.record() if getattr(request, "image", None) else None,
        )
        return result, record(store, paths, prepared, facts)


# Looking records up -------------------------------------------------------------------


def find_build(store: Store, ref: str) -> BuildRow:
    """A build by id, unique id prefix, or `last`."""
    from krate.store import artifacts as rows

    return ids.resolve(
        ref,
        "build",
        last=lambda: rows.last_build(store),
        exact=lambda build_id: rows.get_build(store, build_id),
        prefixed=lambda prefix: rows.builds_with_prefix(store, prefix),
        none_yet="no builds yet; record one with `krate build --out PATH -- CMD`",
        listing="krate builds list",
    )


def find_artifact(store: Store, ref: str) -> list[ArtifactRow]:
    """Records (newest first) of one artifact named by digest, unique digest prefix, or name.

    A full or prefix digest returns every record of that content; a name returns the
    records of that name (the newest is the one meant). A name that is also a hex
    prefix of a recorded digest is taken as the digest.
    """
    from krate.store import artifacts as rows

    text = ref.strip()
    if not text:
        raise UsageError("name an artifact: a digest, a digest prefix or a file name")
    lower = text.lower()
    hex_part = lower[len("sha256:") :] if lower.startswith("sha256:") else lower
    if hex_part and all(c in "0123456789abcdef" for c in hex_part):
        if len(hex_part) == 64:
            found = rows.artifacts_with_digest(store, "sha256:" + split_digest(hex_part))
            if found:
                return found
            raise NotFound(f"no artifact sha256:{hex_part} recorded; `krate artifacts list`")
        digests = rows.digests_with_prefix(store, "sha256:" + hex_part)
        if len(digests) == 1:
            return rows.artifacts_with_digest(store, digests[0])
        if len(digests) > 1:
            shown = digests[:10]
            listing = "; ".join(f"{d} ({_names(store, d)})" for d in shown)
            more = " and more" if len(digests) > 10 else ""
            raise KrateError(
                f"digest prefix {text!r} is ambiguous: it matches {listing}{more}; "
                "give more hex digits"
            )
        if lower.startswith("sha256:"):
            raise NotFound(f"no artifact with a digest starting {text!r}; `krate artifacts list`")
    name = text[2:] if text.startswith("./") else text
    found = rows.artifacts_named(store, name) or rows.artifacts_name_ending(store, name)
    if found:
        return found
    raise NotFound(f"no artifact {text!r} (by digest or name); `krate artifacts list` shows them")


def _names(store: Store, digest: str) -> str:
    from krate.store import artifacts as rows

    names = sorted({r.name for r in rows.artifacts_with_digest(store, digest)})
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def provenance_of(store: Store, ref: str) -> tuple[BuildRow, ArtifactRow]:
    """The build record that produced the artifact `ref` names (the newest one)."""
    from krate.store import artifacts as rows

    artifact = find_artifact(store, ref)[0]
    build = rows.get_build(store, artifact.build_id)
    if build is None:  # the index rows are written together; only an edited database gets here
        raise NotFound(f"the build {artifact.build_id} of {artifact.digest} is not recorded")
    return build, artifact


@dataclass
class VerifyReport:
    checked: int
    problems: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "problems": self.problems}


def verify(store: Store, paths: Paths, ref: str | None = None) -> VerifyReport:
    """Re-hash stored blobs against the records; also check each statement against its event.

    Every missing or changed blob, and every build record whose statement no longer
    matches the digest in its tamper-evident event, is a problem (all are reported).
    """
    from krate.store import artifacts as rows

    blobs = ArtifactStore(paths.artifacts_dir)
    problems: list[dict[str, Any]] = []
    if ref is not None:
        records = find_artifact(store, ref)
        targets = [(records[0].digest, records[0].size, sorted({r.name for r in records}))]
    else:
        targets = rows.recorded_digests(store)
    for digest, size, names in targets:
        problem = blobs.check(digest, size)
        if problem:
            problems.append(
                {
                    "digest": digest,
                    "names": names,
                    "problem": problem,
                    "path": str(blobs.path_for(digest)),
                }
            )
    if ref is None:
        chained = rows.statement_digests_in_chain(store)
        for build in rows.list_builds(store):
            actual = hashlib.sha256(build.statement.encode("utf-8")).hexdigest()
            expected = chained.get(build.id)
            if expected is None:
                problem = "its build.recorded event is missing"
            elif actual != expected or actual != build.statement_sha256:
                problem = "its statement does not match the digest in its build.recorded event"
            else:
                continue
            problems.append({"build_id": build.id, "problem": problem})
    return VerifyReport(len(targets), problems)


def export(store: Store, paths: Paths, ref: str, dest: Path) -> ArtifactRow:
    """Copy the artifact `ref` names out of the store to `dest` (never overwriting)."""
    artifact = find_artifact(store, ref)[0]
    ArtifactStore(paths.artifacts_dir).export(artifact.digest, dest)
    return artifact


def summary(statement: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a statement a person reads first (for the human view)."""
    pred = statement.get("predicate", {})
    definition = pred.get("buildDefinition", {})
    details = pred.get("runDetails", {})
    return {
        "subjects": [(s.get("name"), s.get("digest", {})) for s in statement.get("subject", [])],
        "external": definition.get("externalParameters", {}),
        "internal": definition.get("internalParameters", {}),
        "dependencies": definition.get("resolvedDependencies", []),
        "builder": details.get("builder", {}),
        "metadata": details.get("metadata", {}),
        "byproducts": [
            (b.get("name"), b.get("annotations")) for b in details.get("byproducts", [])
        ],
    }


def show_artifact(store: Store, paths: Paths, ref: str) -> dict[str, Any]:
    """The newest record `ref` names, where its bytes are, and every record of that content."""
    from krate.store import artifacts as rows

    newest = find_artifact(store, ref)[0]
    path = ArtifactStore(paths.artifacts_dir).path_for(newest.digest)
    return {
        **newest.to_dict(),
        "path": str(path),
        "present": path.is_file(),
        "records": [r.to_dict() for r in rows.artifacts_with_digest(store, newest.digest)],
    }
