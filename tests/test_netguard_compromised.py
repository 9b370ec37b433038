"""A compromised dependency tries three ways out during a non-network command: all refused.

The fixture package (tests/fixtures/compromised_dep) is pip-installed into a temp
folder at test time and put first on PYTHONPATH, where it shadows annotated_doc
(imported by typer, so by every krate command, after the lockdown).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_krate

FIXTURE = Path(__file__).parent / "fixtures" / "compromised_dep"
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel lockdown is tested on Linux"
)


@pytest.fixture(scope="module")
def compromised(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("compromised")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(FIXTURE),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "annotated_doc" / "__init__.py").exists()
    return target


def attack_env(compromised: Path, target: str, report: Path) -> dict:
    return dict(
        os.environ,
        PYTHONPATH=str(compromised),
        KRATE_ATTACK_TARGET=target,
        KRATE_ATTACK_REPORT=str(report),
    )


def attack_line(compromised: Path, marker: str) -> int:
    text = (compromised / "annotated_doc" / "__init__.py").read_text().splitlines()
    return next(i for i, line in enumerate(text, 1) if marker in line)


def test_fixture_really_attacks_when_krate_is_not_there(compromised, listener, tmp_path):
    """Control: the same import in an unguarded, unlocked Python does reach the listener."""
    (host, port), accepted = listener
    target = f"{host}:{port}"
    report = tmp_path / "report.jsonl"
    env = attack_env(compromised, target, report)
    subprocess.run([sys.executable, "-c", "import annotated_doc"], env=env, check=True, timeout=60)
    (results,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert results["ctypes"]["socket"] == "created" and results["ctypes"]["connect"] == 0
    assert results["child"]["exit"] == 0
    assert results["python"] == "connected"
    assert len(accepted) == 3


def test_all_three_ways_out_are_refused_and_the_python_one_is_recorded(
    compromised, listener, tmp_path, krate_home
):
    (host, port), accepted = listener
    target = f"{host}:{port}"
    assert run_krate("audit", "note", "before").returncode == 0
    report = tmp_path / "report.jsonl"
    result = run_krate("audit", "verify", env=attack_env(compromised, target, report))

    (results,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert results["ctypes"] == {"socket": "refused", "errno": 13}  # EACCES from the kernel
    assert results["child"]["exit"] != 0 and "PermissionError" in results["child"]["error"]
    assert results["python"].startswith("NetworkRefused")
    assert accepted == [], "the compromised dependency reached the listener"

    assert result.returncode == 1
    line = attack_line(compromised, "# ATTACK: python")
    where = f"{compromised}/annotated_doc/__init__.py:{line}"
    assert where in result.stderr
    events = json.loads(run_krate("audit", "list", "--kind", "guard.", "--json").stdout)
    (event,) = events
    assert f"{event['data']['file']}:{event['data']['line']}" == where
    assert event["data"]["target"] == target
    assert event["data"]["command"] == "krate audit verify"


def test_prove_fails_while_the_compromised_dependency_is_installed(compromised, listener, tmp_path):
    (host, port), accepted = listener
    target = f"{host}:{port}"
    report = tmp_path / "report.jsonl"
    result = run_krate(
        "audit", "network", "--prove", "--json", env=attack_env(compromised, target, report)
    )
    assert result.returncode == 1
    proof = json.loads(result.stdout)
    assert proof["proven"] is False and proof["verdict"] == "failed"
    assert proof["layers"]["guard"]["agrees"] is False
    assert proof["layers"]["guard"]["attempts"] > 0
    # The proof's own process imported it too and names it.
    own = proof["layers"]["guard"]["attempts_in_this_process"]
    assert own and own[0]["file"].endswith("annotated_doc/__init__.py")
    assert any(c["outbound_attempts"] > 0 for c in proof["commands"])
    hooks = {h["kind"]: h["where"] for h in proof["layers"]["static"]["hooks"]}
    assert hooks["$PYTHONPATH"] == str(compromised)
    if proof["layers"]["os"]["checked"]:
        assert proof["layers"]["os"]["agrees"] is False
        assert {a["result"] for a in proof["layers"]["os"]["attempts"]} == {"refused"}
    assert accepted == []
