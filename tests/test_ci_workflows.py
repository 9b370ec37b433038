"""The macOS workflow runs the Linux CI's command and the smoke script on Apple-silicon runners.

The workflow has never run from here (no Mac, no GitHub): these tests check what can be
checked without one. The YAML is parsed by Ruby's standard YAML library (Ruby is already
installed for the formula tests); no Python YAML library is among krate's dependencies.
scripts/install is run with `uname` answering Darwin to show it does not take Apple's
/usr/bin/python3 (3.9) there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "macos.yml"
RUBY = shutil.which("ruby")
TO_JSON = "puts JSON.generate(YAML.safe_load(File.read(ARGV[0])))"


@pytest.mark.skipif(RUBY is None, reason="needs ruby (scripts/install --dev installs it)")
def test_the_macos_workflow_runs_the_tests_and_the_smoke_on_macos_14_and_15():
    out = subprocess.run(
        [RUBY, "-ryaml", "-rjson", "-e", TO_JSON, str(WORKFLOW)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    doc = json.loads(out.stdout)
    triggers = doc.get("on", doc.get("true"))  # YAML 1.1 reads a bare `on` key as true
    assert {"push", "pull_request"} <= set(triggers)
    assert doc["permissions"] == {"contents": "read"}  # the token can change nothing
    (job,) = doc["jobs"].values()
    assert job["strategy"]["matrix"] == {"os": ["macos-14", "macos-15"]}
    assert job["strategy"]["fail-fast"] is False  # one runner's failure does not hide the other's
    assert job["runs-on"] == "${{ matrix.os }}"
    steps = job["steps"]
    assert steps[0]["uses"].startswith("actions/checkout@")
    assert [s.get("run") for s in steps[1:]] == ["scripts/test", "scripts/macos-smoke"]
    assert steps[2]["if"] == "${{ !cancelled() }}"  # the smoke runs even when a test failed
    # As simple as the Linux CI: the same script, nothing installed by the workflow itself.
    assert (REPO / ".ci" / "run").read_text().rstrip().endswith("exec scripts/test")
    for word in ("sudo", "apt-get", "brew ", "setup-python"):
        assert word not in WORKFLOW.read_text()
    for script in ("scripts/test", "scripts/macos-smoke", "scripts/install"):
        assert os.access(REPO / script, os.X_OK), script


def test_install_on_macos_takes_homebrews_python_not_apples(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "tried"
    (bin_ / "uname").write_text("#!/bin/sh\necho Darwin\n")
    for name in ("python3", "python3.13", "python3.12", "python3.11"):  # none is usable
        (bin_ / name).write_text(f"#!/bin/sh\necho {name} >>{log}\nexit 1\n")
    for path in bin_.iterdir():
        path.chmod(0o755)
    copy = tmp_path / "repo" / "scripts" / "install"  # a wrong pick touches only this copy
    copy.parent.mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "install", copy)
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([str(copy)], env=env, capture_output=True, text=True, timeout=120)
    # /usr/bin/python3 here is 3.11+ and would have been taken: it was not tried.
    assert out.returncode == 1, out.stderr
    assert out.stderr == "scripts/install: needs Python 3.11+ with venv (brew install python)\n"
    assert log.read_text().split() == ["python3", "python3.13", "python3.12", "python3.11"]
