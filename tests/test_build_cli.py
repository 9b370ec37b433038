"""`krate build` end to end: a real sandboxed run of the installed `krate`, then its record."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from krate.provenance import statement as st

from .conftest import KRATE, as_root, run_krate

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2
MAKE = "mkdir -p dist/sub/deep && printf one > dist/a.txt && printf one > dist/sub/copy.txt && "
MAKE += "printf two > dist/sub/deep/b.bin && printf 'workload stdout\\n'"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def krate(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return run_krate(*as_root(args), cwd=ws)


def jsonout(ws: Path, *args: str):
    result = krate(ws, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def ws(tmp_path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


def test_build_records_every_nested_output_and_passes_stdout_through(ws, krate_home):
    result = krate(ws, "build", "--out", "dist", "--name", "demo", "--", "sh", "-c", MAKE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "workload stdout\n", "krate added to or changed the workload's stdout"
    assert "krate: build " in result.stderr and "3 outputs recorded" in result.stderr

    listed = jsonout(ws, "artifacts", "list", "--json")
    names = {a["name"]: a["digest"] for a in listed}
    expected = {"dist/a.txt": b"one", "dist/sub/copy.txt": b"one", "dist/sub/deep/b.bin": b"two"}
    assert names == {n: f"sha256:{sha(c)}" for n, c in expected.items()}
    # Checked with the standard tool, and identical content stored once.
    for name in expected:
        tool = subprocess.run(["sha256sum", name], cwd=ws, capture_output=True, text=True)
        assert names[name] == "sha256:" + tool.stdout.split()[0]
    blobs = sorted(p.name for p in (krate_home / "artifacts" / "sha256").iterdir())
    assert blobs == sorted({sha(b"one"), sha(b"two")})

    run = jsonout(ws, "runs", "show", "last", "--json")
    statement = jsonout(ws, "provenance", "dist/a.txt", "--json")
    assert st.validate(statement) == []
    meta = statement["predicate"]["runDetails"]["metadata"]
    assert meta["invocationId"] == run["id"]
    assert meta["startedOn"] == run["started"] and meta["finishedOn"] == run["finished"]
    assert meta["startedOn"].endswith("Z")
    ext = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert ext["argv"] == ["sh", "-c", MAKE]
    assert ext["policy"] == {"name": run["policy_name"], "sha256": run["policy_hash"]}
    assert ext["workingDirectory"] == str(ws)
    internal = statement["predicate"]["buildDefinition"]["internalParameters"]
    assert internal["sandbox"] == run["backend"] == "bubblewrap"
    byproducts = {b["name"]: b for b in statement["predicate"]["runDetails"]["byproducts"]}
    assert byproducts["exitStatus"]["annotations"] == {"exitStatus": 0}
    assert byproducts["policyDecisions"]["annotations"] == run["decision_counts"]

    builds = jsonout(ws, "builds", "list", "--json")
    assert [(b["name"], b["run_id"], b["subjects"]) for b in builds] == [("demo", run["id"], 3)]
    verified = krate(ws, "artifacts", "verify")
    assert verified.returncode == 0 and "2 artifacts verified" in verified.stdout


def test_secrets_on_the_build_command_line_are_redacted(ws, krate_home):
    script = "mkdir -p dist && printf x > dist/x"
    result = krate(
        ws, "build", "--out", "dist", "--", "sh", "-c", script, "sh",
        "--token=abc123secret", "--password", "hunter2", TOKEN,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    raw = krate(ws, "provenance", "dist/x", "--json").stdout
    argv = json.loads(raw)["predicate"]["buildDefinition"]["externalParameters"]["argv"]
    assert argv[:4] == ["sh", "-c", script, "sh"]
    assert argv[4] == "--token=***" and argv[5:] == ["--password", "***", "***"]
    dsse = krate(ws, "provenance", "dist/x", "--dsse").stdout
    for secret in ("abc123secret", "hunter2", TOKEN):
        assert secret not in raw and secret not in dsse
    # Nowhere in the store either (the database and its WAL).
    for path in krate_home.glob("krate.db*"):
        data = path.read_bytes()
        for secret in ("abc123secret", "hunter2", TOKEN):
            assert secret.encode() not in data, (secret, path.name)


def test_a_failing_build_passes_its_status_through_and_records_no_artifacts(ws, krate_home):
    result = krate(
        ws, "build", "--out", "dist", "--", "sh", "-c", "mkdir dist; echo x > dist/a; exit 7"
    )
    assert result.returncode == 7
    assert "no build recorded: the command exited with status 7" in result.stderr
    run = jsonout(ws, "runs", "show", "last", "--json")
    assert run["exit_code"] == 7 and run["status"] == "finished"
    assert jsonout(ws, "artifacts", "list", "--json") == []
    assert jsonout(ws, "builds", "list", "--json") == []
    assert not (krate_home / "artifacts").exists()
    failed = jsonout(ws, "audit", "list", "--kind", "build.", "--json")
    assert [(e["kind"], e["run_id"], e["data"]["exit_status"]) for e in failed] == [
        ("build.failed", run["id"], 7)
    ]


def test_a_build_that_produced_nothing_is_a_clear_error(ws):
    (ws / "dist").mkdir()
    result = krate(ws, "build", "--out", "dist", "--", "true")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "krate: the build succeeded but left no file under --out dist; check the --out paths "
        "(symbolic links are not collected)"
    )
    missing = krate(ws, "build", "--out", "build/out", "--", "true")
    assert missing.returncode == 1 and "--out build/out does not exist" in missing.stderr
    assert jsonout(ws, "builds", "list", "--json") == []


def test_options_are_checked_before_anything_runs(ws):
    no_out = krate(ws, "build", "--", "touch", "ran")
    assert no_out.returncode == 2 and "--out" in no_out.stderr
    bad_glob = krate(ws, "build", "--out", "d", "--input", "src/*.c", "--", "touch", "ran")
    assert bad_glob.returncode == 2 and "matches no file" in bad_glob.stderr
    assert not (ws / "ran").exists()
    assert jsonout(ws, "runs", "list", "--json") == []


def test_not_found_and_sandbox_exit_codes_are_the_workloads(ws):
    assert krate(ws, "build", "--out", "d", "--", "no-such-command-xyz").returncode == 127


def test_inputs_and_git_state_are_pinned(ws):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run([*git, "init", "-q"], cwd=ws, check=True)
    (ws / "src").mkdir()
    (ws / "src" / "main.c").write_text("int main(){}\n")
    (ws / ".gitignore").write_text("dist/\n")
    subprocess.run([*git, "add", "."], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=ws, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True
    ).stdout.strip()
    result = krate(
        ws, "build", "--out", "dist", "--input", "src/**/*.c", "--",
        "sh", "-c", "mkdir -p dist && cp src/main.c dist/main.c",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deps = jsonout(ws, "builds", "last", "--json")["statement"]["predicate"]["buildDefinition"]
    assert deps["resolvedDependencies"] == [
        {
            "name": "workspace",
            "uri": f"git+file://{ws}",
            "digest": {"gitCommit": commit},
            "annotations": {"dirty": False},
        },
        {"name": "src/main.c", "digest": {"sha256": sha(b"int main(){}\n")}},
    ]


def test_the_documented_hand_check_works(ws):
    """docs/provenance.md: check outputs and the record with sha256sum/shasum and jq only."""
    assert krate(ws, "build", "--out", "dist", "--", "sh", "-c", MAKE).returncode == 0
    script = r"""
set -eu
krate provenance dist/a.txt --json > statement.json
jq -r '.subject[] | "\(.digest.sha256)  \(.name)"' statement.json | shasum -a 256 -c -
test "$(jq -r '.predicateType' statement.json)" = https://slsa.dev/provenance/v1
recorded=$(krate audit list --kind build.recorded --json | jq -r '.[-1].data.statement_sha256')
actual=$(tr -d '\n' < statement.json | shasum -a 256 | cut -d' ' -f1)
test "$recorded" = "$actual"
krate provenance dist/a.txt --dsse | jq -r .payload | base64 -d | shasum -a 256 | grep -q "$actual"
echo checked
"""
    env = dict(os.environ, PATH=str(Path(KRATE).parent) + os.pathsep + os.environ["PATH"])
    out = subprocess.run(["bash", "-c", script], cwd=ws, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.strip().endswith("checked")
