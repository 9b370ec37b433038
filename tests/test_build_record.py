"""Recording a build: every output stored with the right digest, provenance that validates,
failures that record no artifacts, inputs and git state pinned before the run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from krate.errors import KrateError
from krate.paths import Paths
from krate.provenance import build as domain
from krate.provenance import statement as st
from krate.provenance.git import workspace_state
from krate.store import artifacts as rows
from krate.store import events, open_store

from .build_support import blob_dir, facts, record_build


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _events(kind: str) -> list[events.Event]:
    with open_store(Paths.from_env(os.environ), readonly=True) as store:
        return events.query(store, kind_prefix=kind)


def test_nested_outputs_are_each_recorded_with_their_digest_and_stored_once(tmp_path, krate_home):
    files = {
        "dist/app.tar.gz": b"tarball bytes",
        "dist/sub/deeper/app.whl": b"wheel bytes",
        "dist/sub/copy.tar.gz": b"tarball bytes",  # identical content
        "dist/empty": b"",
        "src/main.c": b"not an output",
    }
    result = record_build(tmp_path / "ws", files, name="release")
    build = result.build
    expected = {n: sha(c) for n, c in files.items() if n.startswith("dist/")}
    assert {a.name: a.digest for a in result.artifacts} == {
        n: f"sha256:{h}" for n, h in expected.items()
    }
    assert {a.name: a.size for a in result.artifacts} == {
        n: len(c) for n, c in files.items() if n.startswith("dist/")
    }
    # Identical content stored once: three distinct contents, three blobs.
    stored = sorted(p.name for p in blob_dir(krate_home).iterdir())
    assert stored == sorted(set(expected.values()))
    assert result.new_blobs == 3
    for digest in stored:
        assert sha((blob_dir(krate_home) / digest).read_bytes()) == digest

    statement = json.loads(build.statement)
    assert st.validate(statement) == []
    assert [(s["name"], s["digest"]["sha256"]) for s in statement["subject"]] == sorted(
        expected.items()
    )
    assert build.statement_sha256 == sha(build.statement.encode())
    assert build.name == "release" and build.subjects == 4

    stored_events = _events("artifact.stored")
    assert sorted(e.data["name"] for e in stored_events) == sorted(expected)
    assert all(set(e.data) == {"digest", "size", "name", "build_id", "new"} for e in stored_events)
    recorded = _events("build.recorded")
    assert len(recorded) == 1
    assert recorded[0].data == {
        "build_id": build.id,
        "name": "release",
        "subjects": sorted({f"sha256:{h}" for h in expected.values()}),
        "statement_sha256": build.statement_sha256,
    }
    assert recorded[0].run_id == build.run_id


def test_a_second_build_of_the_same_content_adds_records_not_blobs(tmp_path, krate_home):
    record_build(tmp_path / "ws", {"dist/a": b"same"})
    second = record_build(tmp_path / "ws")
    assert second.new_blobs == 0
    assert len(list(blob_dir(krate_home).iterdir())) == 1
    with open_store(Paths.from_env(os.environ), readonly=True) as store:
        assert len(rows.list_builds(store)) == 2
        assert len(rows.list_artifacts(store)) == 2
    assert [e.data["new"] for e in _events("artifact.stored")] == [True, False]


def test_statement_fields_follow_the_issue(tmp_path):
    run = facts(
        argv=["make", "--token=***"],
        sandbox={"network": "none"},
        decisions={"allowed": 5, "denied": 2},
    )
    result = record_build(
        tmp_path / "ws",
        {"dist/a": b"a", "src/x.c": b"x", "src/y.c": b"y"},
        inputs=("src/*.c",),
        name="n",
        run=run,
    )
    statement = json.loads(result.build.statement)
    definition = statement["predicate"]["buildDefinition"]
    details = statement["predicate"]["runDetails"]
    assert definition["buildType"] == domain.BUILD_TYPE
    assert definition["externalParameters"] == {
        "argv": ["make", "--token=***"],
        "workingDirectory": str(tmp_path / "ws"),
        "outputs": ["dist"],
        "inputs": ["src/*.c"],
        "name": "n",
        "policy": {"name": "default", "sha256": "ab" * 32},
    }
    assert definition["internalParameters"] == {"sandbox": "bubblewrap", "network": "none"}
    assert definition["resolvedDependencies"] == [
        {"name": "src/x.c", "digest": {"sha256": sha(b"x")}},
        {"name": "src/y.c", "digest": {"sha256": sha(b"y")}},
    ]
    assert details["builder"] == {"id": domain.BUILDER_ID, "version": {"krate": "0.1.0"}}
    assert "krate" in details["builder"]["id"] and "0.1.0" in details["builder"]["id"]
    assert details["metadata"] == {
        "invocationId": run.run_id,
        "startedOn": "2026-11-01T12:00:00.000000Z",
        "finishedOn": "2026-11-01T12:00:03.000250Z",
    }
    by_name = {b["name"]: b for b in details["byproducts"]}
    assert by_name["exitStatus"]["annotations"] == {"exitStatus": 0}
    assert by_name["policyDecisions"]["annotations"] == {"allowed": 5, "denied": 2}


def test_inputs_are_hashed_before_the_run(tmp_path):
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "in.txt").write_bytes(b"before")
    paths = Paths.from_env(os.environ)
    prepared = domain.prepare(workdir=ws, outs=["dist"], input_globs=["src/**"], environ=os.environ)
    (ws / "src" / "in.txt").write_bytes(b"after the build changed it")
    (ws / "dist").mkdir()
    (ws / "dist" / "o").write_bytes(b"o")
    with open_store(paths) as store:
        result = domain.record(store, paths, prepared, facts())
    deps = json.loads(result.build.statement)["predicate"]["buildDefinition"]
    assert deps["resolvedDependencies"] == [
        {"name": "src/in.txt", "digest": {"sha256": sha(b"before")}}
    ]


def test_an_input_glob_matching_nothing_fails_before_anything_runs(tmp_path):
    with pytest.raises(KrateError, match="matches no file"):
        domain.prepare(workdir=tmp_path, outs=["d"], input_globs=["nope/*.c"], environ=os.environ)


def test_a_failed_run_records_the_failure_and_no_artifacts(tmp_path, krate_home):
    result = record_build(tmp_path / "ws", {"dist/a": b"partial"}, run=facts(exit_status=3))
    assert result.build is None and result.artifacts == []
    assert result.failed_reason == "the command exited with status 3"
    assert not blob_dir(krate_home).exists()
    failed = _events("build.failed")
    assert [e.data["exit_status"] for e in failed] == [3]
    assert _events("artifact.") == [] and _events("build.recorded") == []


def test_nothing_under_out_is_a_clear_error(tmp_path, krate_home):
    (tmp_path / "ws" / "dist" / "empty-folder").mkdir(parents=True)
    with pytest.raises(KrateError, match="no file under --out dist") as info:
        record_build(tmp_path / "ws")
    assert info.value.exit_code == 1
    assert _events("build.recorded") == []
    assert [e.data["reason"] for e in _events("build.failed")] == ["no file under --out dist"]


def test_a_missing_out_path_is_named(tmp_path):
    with pytest.raises(KrateError, match="--out build/out does not exist"):
        record_build(tmp_path / "ws", {"dist/a": b"a"}, outs=("dist", "build/out"))


def test_symbolic_links_in_outputs_are_never_followed(tmp_path, krate_home):
    """A workload plants links to the user's secrets in its output folder: none is stored."""
    secret = tmp_path / "home" / ".ssh" / "id_ed25519"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- very secret")
    ws = tmp_path / "ws"
    (ws / "dist").mkdir(parents=True)
    (ws / "dist" / "real").write_bytes(b"real output")
    (ws / "dist" / "key").symlink_to(secret)
    (ws / "dist" / "sshdir").symlink_to(secret.parent)
    result = record_build(ws)
    assert [a.name for a in result.artifacts] == ["dist/real"]
    assert sorted(result.skipped) == ["dist/key", "dist/sshdir"]
    assert [p.name for p in blob_dir(krate_home).iterdir()] == [sha(b"real output")]
    # The --out path itself as a link is refused outright.
    (ws / "out").symlink_to(secret.parent)
    with pytest.raises(KrateError, match="symbolic link"):
        record_build(ws, outs=("out",))
    assert sha(secret.read_bytes()) not in {p.name for p in blob_dir(krate_home).iterdir()}


def test_outputs_outside_the_workdir_are_named_from_their_folder(tmp_path):
    result = record_build(
        tmp_path / "ws",
        {"../elsewhere/out/a.txt": b"a", "single.bin": b"s"},
        outs=(str(tmp_path / "elsewhere" / "out"), "single.bin"),
    )
    assert sorted(a.name for a in result.artifacts) == ["out/a.txt", "single.bin"]


def _git(cwd: Path, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@e",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@e",
        GIT_CONFIG_GLOBAL="/dev/null",
    )
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    ws = tmp_path / "repo"
    ws.mkdir()
    _git(ws, "init", "-q")
    (ws / "README").write_text("hi\n")
    (ws / ".gitignore").write_text("dist/\n")
    _git(ws, "add", ".")
    _git(ws, "commit", "-qm", "first")
    return ws


def test_git_commit_and_dirty_state_are_recorded(repo):
    commit = _git(repo, "rev-parse", "HEAD")
    clean = workspace_state(repo, os.environ)
    assert clean is not None and clean.commit == commit and not clean.dirty
    result = record_build(repo, {"dist/a": b"a"})
    deps = json.loads(result.build.statement)["predicate"]["buildDefinition"]
    assert deps["resolvedDependencies"] == [
        {
            "name": "workspace",
            "uri": f"git+file://{repo}",
            "digest": {"gitCommit": commit},
            "annotations": {"dirty": False},
        }
    ]
    (repo / "README").write_text("changed\n")
    assert workspace_state(repo, os.environ).dirty
    (repo / "README").write_text("hi\n")
    (repo / "untracked.c").write_text("new")
    assert workspace_state(repo, os.environ).dirty
    (repo / "untracked.c").unlink()
    assert workspace_state(repo / "dist", os.environ).commit == commit  # from a subfolder


def test_not_a_repository_records_no_git_dependency(tmp_path):
    assert workspace_state(tmp_path, os.environ) is None
    result = record_build(tmp_path / "ws", {"dist/a": b"a"})
    definition = json.loads(result.build.statement)["predicate"]["buildDefinition"]
    assert "resolvedDependencies" not in definition


def test_repository_config_cannot_make_krate_run_programs(repo, tmp_path):
    """A workload writes .git/config so that `git status` would run its program outside the
    sandbox (fsmonitor hook, clean filter): krate runs neither, and still records the state."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\ncat\n")
    evil.chmod(0o755)
    (repo / ".gitattributes").write_text("*.txt filter=evil\n")
    (repo / "a.txt").write_text("data\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "attrs")
    marker.unlink(missing_ok=True)
    _git(repo, "config", "core.fsmonitor", str(evil))
    # The filter driver hides in an included file.
    included = tmp_path / "more.cfg"
    included.write_text(f'[filter "evil"]\n\tclean = {evil}\n')
    _git(repo, "config", "include.path", str(included))
    # Make the index stale so that git would re-read (and filter) the file.
    os.utime(repo / "a.txt", (1, 1))
    state = workspace_state(repo, os.environ)
    assert not marker.exists(), "git ran a program named by the repository's config"
    assert state is not None and state.commit == _git(repo, "rev-parse", "HEAD")


def test_a_folder_swapped_for_a_link_after_the_walk_is_not_followed(tmp_path):
    """A leftover process replaces dist/sub with a link to ~/.ssh between listing and reading."""
    from krate.provenance.collect import collect

    secret_dir = tmp_path / "home" / ".ssh"
    secret_dir.mkdir(parents=True)
    (secret_dir / "id").write_bytes(b"PRIVATE KEY")
    ws = tmp_path / "ws"
    (ws / "dist" / "sub").mkdir(parents=True)
    (ws / "dist" / "sub" / "id").write_bytes(b"harmless")
    found = collect(["dist"], ws)
    assert [o.name for o in found.files] == ["dist/sub/id"]
    (ws / "dist" / "sub" / "id").unlink()
    (ws / "dist" / "sub").rmdir()
    (ws / "dist" / "sub").symlink_to(secret_dir)
    with pytest.raises(KrateError, match="symbolic link"):
        found.files[0].open()
    # The path-based open would have read the secret: this is what the check prevents.
    assert (ws / "dist" / "sub" / "id").read_bytes() == b"PRIVATE KEY"
