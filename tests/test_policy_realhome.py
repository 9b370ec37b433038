"""Hiding follows the user's real home (the password database) as well as $HOME.

`HOME=/var/tmp/x krate run ...` used to move every `~/...` secret store to the
fake home, leaving the real `~/.ssh` readable. Attacked for real, as root and as
the ordinary user; root's own home is touched only by a file that did not exist
and is removed again (never its `.ssh`).
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from krate.policy import Flags, effective_policy

from .conftest import chown_tree
from .run_support import SECRET

needs_bwrap = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")


@needs_bwrap
def test_a_fake_HOME_does_not_expose_the_real_homes_secrets(box):
    entry = pwd.getpwnam(box.user) if box.user else pwd.getpwuid(0)
    real = Path(entry.pw_dir)
    # krate-test's home is disposable; in root's, only a file that is not there yet
    target = real / ".ssh" / "krate-test-secret" if box.user else real / ".netrc"
    if target.exists() or (box.user is None and not real.is_dir()):
        pytest.skip(f"{target} exists (or there is no home): not touching it")
    made_folder = not target.parent.exists()
    fake = box.base / "fake-home"
    (fake / ".ssh").mkdir(parents=True)
    (fake / ".ssh" / "id_ed25519").write_text(SECRET + "-fake\n")
    try:
        target.parent.mkdir(mode=0o700, exist_ok=True)
        target.write_text(SECRET + "\n")
        target.chmod(0o600)
        if box.user:
            chown_tree(target.parent, box.user)
            chown_tree(fake, box.user)
        out = box.sh(f"cat {target} {fake}/.ssh/id_ed25519; echo end", env=box.env(HOME=str(fake)))
        assert SECRET not in out.stdout and out.stdout.endswith("end\n"), out.stdout
        hidden = box.last_run()["layout"]["hidden"]
        assert str(target.parent if box.user else target) in hidden
        assert str(fake / ".ssh") in hidden  # $HOME's stores stay hidden too
    finally:
        if made_folder:
            shutil.rmtree(target.parent, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def test_narrowing_rules_with_a_tilde_apply_under_both_homes(tmp_path):
    ws, fake, real = tmp_path / "ws", tmp_path / "fake", tmp_path / "real"
    for folder in (ws, fake, real):
        folder.mkdir()
    user = tmp_path / "policy.toml"
    user.write_text('[filesystem]\ndeny_read = ["~/notes"]\nallow_write = ["~/.cache/x"]\n')
    policy = effective_policy(
        workspace=ws,
        home=fake,
        real_home=real,
        user_policy_path=user,
        trusted={},
        flags=Flags(),
    )
    for home in (fake, real):
        for path in (home / ".ssh" / "id_rsa", home / "notes"):
            decision = policy.decide_read(path)
            assert decision.verdict == "deny", path
        assert policy.decide_read(home / ".ssh").rule == "filesystem.deny_read: ~/.ssh"
    # widening rules keep meaning $HOME (the home the workload's tools use)
    assert policy.decide_write(fake / ".cache" / "x" / "f").verdict == "allow"
    assert policy.decide_write(real / ".cache" / "x" / "f").verdict == "deny"

    def compiled(**real):
        return effective_policy(
            workspace=ws, home=fake, user_policy_path=user, trusted={}, flags=Flags(), **real
        )

    assert compiled(real_home=fake).hash == compiled().hash  # same home: nothing added
