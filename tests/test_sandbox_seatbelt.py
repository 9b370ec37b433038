"""Seatbelt (macOS) profiles, pinned as golden files here and executed on macOS.

The profile is generated from the same SandboxSpec as the bubblewrap command, so
these files show, as text a reviewer can read, what a workload may do on a Mac.
Regenerate after an intended change with KRATE_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from krate.policy import Flags, effective_policy
from krate.sandbox import seatbelt
from krate.sandbox.spec import build

GOLDEN = Path(__file__).parent / "golden"
HOME = Path("/Users/alice")
WS = HOME / "src" / "app"
DATA = HOME / "Library" / "Application Support" / "krate"
RUN_TMP = DATA / "run" / "01m8d0000000abcd" / "tmp"

USER_POLICIES = {
    "user-extra-rules": """
[filesystem]
deny_read = ["~/Documents/taxes", "~/.config/op"]
allow_write = ["~/.cache/pip"]
read_only = [".github/workflows"]

[limits]
wall_seconds = 600
""",
    "user-open-writes": """
[filesystem]
allow_write = ["~/.npm", "/opt/shared cache"]
""",
}


def _spec(tmp_path: Path, flags: Flags, user_policy: str | None = None):
    policy_path = tmp_path / "policy.toml"
    if user_policy is not None:
        policy_path.write_text(user_policy)
    policy = effective_policy(
        workspace=WS,
        home=HOME,
        user_policy_path=policy_path,
        trusted={},
        flags=flags,
        private_dirs=(DATA,),
    )
    spec = build(
        argv=("make",),
        cwd=WS,
        workspace=policy.workspace,
        allow_write=policy.allow_write,
        read_only=policy.read_only,
        deny_read=policy.deny_read,
        env={},
    )
    return seatbelt.with_tmpdir(spec, RUN_TMP), policy


CASES = [(f"profile-{name}", Flags(policy=name), None) for name in ("strict", "default", "open")]
CASES += [(name, Flags(), text) for name, text in USER_POLICIES.items()]
CASES += [
    ("flags-deny-and-write", Flags(deny_read=("~/notes",), allow_write=("/Volumes/scratch",)), None)
]


@pytest.mark.parametrize(("name", "flags", "user_policy"), CASES, ids=[c[0] for c in CASES])
def test_profile_matches_golden_file(tmp_path, name, flags, user_policy):
    spec, policy = _spec(tmp_path, flags, user_policy)
    text = seatbelt.profile(spec, title=f"policy {policy.name}")
    golden = GOLDEN / f"seatbelt-{name}.sb"
    if os.environ.get("KRATE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}; run with KRATE_UPDATE_GOLDEN=1 and review it"
    assert text == golden.read_text()


def test_profile_semantics(tmp_path):
    spec, _ = _spec(tmp_path, Flags(policy="default"))
    text = seatbelt.profile(spec)
    lines = text.splitlines()
    assert lines[0] == "(version 1)" and "(deny default)" in lines
    assert f'(allow file-write* (subpath "{WS}"))' in lines
    # hidden: read and write denied, after (so winning over) the broad read allow
    hide = f'(deny file-read* file-write* (subpath "{HOME}/.ssh"))'
    assert lines.index(hide) > lines.index("(allow file-read*)")
    # a protected path inside the workspace is denied after the workspace is allowed
    hooks = f'(deny file-write* (subpath "{WS}/.git/hooks"))'
    assert lines.index(hooks) > lines.index(f'(allow file-write* (subpath "{WS}"))')
    # ... and its parent cannot be renamed away
    assert f'(deny file-write-unlink (literal "{WS}/.git"))' in lines
    # krate's own data is hidden; no keychain services
    assert f'(deny file-read* file-write* (subpath "{DATA}"))' in lines
    assert "securityd" not in text and "SecurityServer" not in text
    # loopback only
    assert [ln for ln in lines if ln.startswith("(allow network")] == [
        '(allow network-bind network-inbound (local ip "localhost:*"))',
        '(allow network-outbound (remote ip "localhost:*"))',
    ]


def test_quotes_are_escaped_and_long_paths_refused():
    assert seatbelt.quote('/a "b"\\c') == '"/a \\"b\\"\\\\c"'
    with pytest.raises(ValueError):
        seatbelt.quote("/" + "x" * 2000)


MAC = sys.platform == "darwin" and shutil.which("sandbox-exec")


@pytest.mark.skipif(not MAC, reason="Seatbelt profiles execute only on macOS (sandbox-exec)")
def test_profile_executes_on_macos(tmp_path):  # pragma: no cover - macOS only
    home = Path(os.path.realpath(tmp_path))
    ws = home / "ws"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id").write_text("SECRET")
    ws.mkdir()
    policy = effective_policy(
        workspace=ws, home=home, user_policy_path=home / "none", trusted={}, flags=Flags()
    )
    spec = build(
        argv=("/bin/sh", "-c", f"cat {home}/.ssh/id; echo ok > out; echo x > {home}/escape"),
        cwd=ws, workspace=ws, allow_write=policy.allow_write, read_only=policy.read_only,
        deny_read=policy.deny_read, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    (home / "tmp").mkdir()
    spec = seatbelt.with_tmpdir(spec, home / "tmp")
    out = subprocess.run(seatbelt.command(spec, "/usr/bin/sandbox-exec"), cwd=ws,
                         capture_output=True, text=True)  # fmt: skip
    assert "SECRET" not in out.stdout
    assert (ws / "out").read_text() == "ok\n"
    assert not (home / "escape").exists()
