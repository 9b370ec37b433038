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

from .sbpl import decide, parse
from .seatbelt_support import CACHE, RUN_TMP, WS, spec_for

GOLDEN = Path(__file__).parent / "golden"

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


CASES = [(f"profile-{name}", Flags(policy=name), None) for name in ("strict", "default", "open")]
CASES += [(name, Flags(), text) for name, text in USER_POLICIES.items()]
CASES += [
    ("flags-deny-and-write", Flags(deny_read=("~/notes",), allow_write=("/Volumes/scratch",)), None)
]


@pytest.mark.parametrize(("name", "flags", "user_policy"), CASES, ids=[c[0] for c in CASES])
def test_profile_matches_golden_file(tmp_path, name, flags, user_policy):
    spec, policy = spec_for(tmp_path, flags, user_policy)
    text = seatbelt.profile(spec, title=f"policy {policy.name}", user_cache=CACHE)
    golden = GOLDEN / f"seatbelt-{name}.sb"
    if os.environ.get("KRATE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}; run with KRATE_UPDATE_GOLDEN=1 and review it"
    assert text == golden.read_text()


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("seatbelt-*.sb")), ids=lambda p: p.stem)
def test_golden_profiles_stay_inside_what_the_evaluator_checks(golden):
    """tests/sbpl.py refuses constructs it cannot evaluate: the decision tests see every rule."""
    prof = parse(golden.read_text())
    assert prof.default == "deny"
    text = golden.read_text()
    # no keychain services; hard links refused by the last rule
    assert "securityd" not in text and "SecurityServer" not in text
    assert prof.rules[-1].action == "deny" and prof.rules[-1].ops == {"file-link"}


def test_quotes_are_escaped_and_long_paths_refused():
    assert seatbelt.quote('/a "b"\\c') == '"/a \\"b\\"\\\\c"'
    with pytest.raises(ValueError):
        seatbelt.quote("/" + "x" * 2000)
    with pytest.raises(ValueError):
        seatbelt.path_regex("/" + "x" * 300)


def test_paths_with_quotes_and_line_breaks_cannot_add_rules(tmp_path):
    """A policy path is data: a `"` or a line break in it must not end a string or a comment."""
    odd = '/Users/alice/odd* "name"\n(allow default)'
    spec = build(argv=("make",), cwd=WS, workspace=WS, allow_write=(odd,), read_only=(odd + "/ro",),
                 deny_read=(odd + "/secret",), env={})  # fmt: skip
    text = seatbelt.profile(seatbelt.with_tmpdir(spec, RUN_TMP), title="policy\n(allow default)")
    prof = parse(text)
    assert prof.default == "deny"
    assert decide(prof, "file-write*", odd + "/x") == "allow"
    assert decide(prof, "file-write*", odd.replace('"', "x") + "/x") == "deny"
    assert decide(prof, "file-write*", odd.replace("*", "-more") + "/x") == "deny"
    assert decide(prof, "file-write*", odd + "/ro/x") == "deny"
    assert decide(prof, "file-read*", odd + "/secret") == "deny"
    assert decide(prof, "file-write*", "/Users/alice/elsewhere") == "deny"


MAC = sys.platform == "darwin" and shutil.which("sandbox-exec")


# Run inside the sandbox on a Mac: each line prints its marker only when the profile
# decided as a Mac user needs them (the TMPDIR inside the hidden data folder, /dev/stderr,
# a protected name that does not exist, a hard link to a hidden file, case and firmlink
# spellings of a hidden file).
MAC_SCRIPT = """
echo t > "$TMPDIR/t" && cat "$TMPDIR/t" >/dev/null && echo tmp-ok
echo e > /dev/stderr && echo stderr-ok
cat {home}/.ssh/id {home}/.SSH/id /System/Volumes/Data{home}/.ssh/id
touch .envrc 2>/dev/null || echo envrc-refused
ln {home}/.ssh/id hidden-link 2>/dev/null || echo link-refused
echo ok > out; echo x > {home}/escape
"""


@pytest.mark.skipif(not MAC, reason="Seatbelt profiles execute only on macOS (sandbox-exec)")
def test_profile_executes_on_macos(tmp_path):  # pragma: no cover - macOS only
    home = Path(os.path.realpath(tmp_path))
    ws, data = home / "ws", home / "data"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id").write_text("SECRET")
    ws.mkdir()
    policy = effective_policy(
        workspace=ws, home=home, user_policy_path=home / "none", trusted={}, flags=Flags(),
        private_dirs=(data,),
    )  # fmt: skip
    spec = build(
        argv=("/bin/sh", "-c", MAC_SCRIPT.format(home=home)),
        cwd=ws, workspace=ws, allow_write=policy.allow_write, read_only=policy.read_only,
        deny_read=policy.deny_read, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    (data / "run" / "r" / "tmp").mkdir(parents=True)
    spec = seatbelt.with_tmpdir(spec, data / "run" / "r" / "tmp")
    out = subprocess.run(seatbelt.command(spec), cwd=ws, env=dict(spec.env),
                         capture_output=True, text=True)  # fmt: skip
    assert "SECRET" not in out.stdout
    for marker in ("tmp-ok", "stderr-ok", "envrc-refused", "link-refused"):
        assert marker in out.stdout, (marker, out.stdout, out.stderr)
    assert (ws / "out").read_text() == "ok\n"
    assert not (home / "escape").exists()
    assert not (ws / ".envrc").exists() and not (ws / "hidden-link").exists()
