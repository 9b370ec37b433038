"""A throwaway HOME and workspace for `krate run` tests, as root or as an ordinary user.

Boxes live under /var/tmp, not /tmp: the sandbox gives the workload a private
/tmp, so a secret under the host's /tmp would be hidden whatever the policy
said and the tests would prove nothing.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from .conftest import KRATE, as_root, chown_tree, run_krate

SECRET = "SECRET-KEY-0f9a8b7c"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Box:
    def __init__(self, user: str | None) -> None:
        self.user = user
        # krate as root refuses a root-owned workspace unless told to run the workload as root.
        self.as_root = user is None
        self.base = Path(tempfile.mkdtemp(prefix="krate-box-", dir="/var/tmp"))
        os.chmod(self.base, 0o755)
        self.home = self.base / "home"
        self.ws = self.home / "project"
        self.krate_home = self.home / ".krate"
        self.key = self.home / ".ssh" / "id_ed25519"
        self.key.parent.mkdir(parents=True, mode=0o700)
        self.key.write_text(SECRET + "\n")
        self.key.chmod(0o600)
        for sub in (".git/hooks",):
            (self.ws / sub).mkdir(parents=True)
        (self.ws / ".git" / "config").write_text("[core]\n")
        (self.ws / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
        (self.ws / "krate.toml").write_text("# project policy: nothing to add\n")
        (self.ws / "README").write_text("hello\n")
        self.home.chmod(0o755)
        if user:
            chown_tree(self.base, user)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": BASE_PATH,
            "HOME": str(self.home),
            "KRATE_HOME": str(self.krate_home),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def args(self, args: tuple[str, ...]) -> list[str]:
        """`args`, with --as-root after `run`/`build` when this box runs as root on purpose."""
        return as_root(args) if self.as_root else list(args)

    def krate(self, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        args = tuple(self.args(args))
        kw.setdefault("cwd", self.ws)
        if self.user:
            kw.setdefault("group", pwd.getpwnam(self.user).pw_gid)
            kw.setdefault("extra_groups", [])
        return run_krate(*args, env=env or self.env(), user=self.user, **kw)

    def popen(self, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
        kw.setdefault("cwd", self.ws)
        if self.user:
            kw.setdefault("group", pwd.getpwnam(self.user).pw_gid)
            kw.setdefault("extra_groups", [])
        argv = [KRATE, *self.args(args)]
        return subprocess.Popen(argv, env=env or self.env(), user=self.user, **kw)

    def sh(self, script: str, *krate_args: str, **kw) -> subprocess.CompletedProcess:
        return self.krate("run", *krate_args, "--", "/bin/sh", "-c", script, **kw)

    def last_run(self) -> dict:
        out = self.krate("runs", "show", "last", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def events(self, kind: str | None = None) -> list[dict]:
        args = ["audit", "list", "--json"] + (["--kind", kind] if kind else [])
        out = self.krate(*args)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders): to prove nothing changed."""
    out: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = Path(path).read_bytes()
    return out
