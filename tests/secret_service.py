"""A real Secret Service for the tests: gnome-keyring in a private D-Bus session bus.

krate's Linux keychain is keyring's SecretService backend, so the login/push tests talk
to a real provider instead of a fake: `dbus-daemon --session` on a socket in a fresh
folder, and `gnome-keyring-daemon --unlock --components=secrets` on that bus with its
keyrings in the same folder (a login keyring created and unlocked with a throwaway
password on stdin). Only the krate subprocesses given `env()` see this bus; the test
process and the rest of the machine keep theirs. A session bus only accepts its own
uid, so the ordinary-user variant runs both daemons as that user.

Entries are read back with `secret-tool` (libsecret), not with krate's own keyring
code, so a test proves what the service really holds. scripts/install --dev installs
the packages (gnome-keyring, dbus-daemon, libsecret-tools).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

TOOLS = ("dbus-daemon", "gnome-keyring-daemon", "secret-tool", "dbus-send")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
needs_secret_service = pytest.mark.skipif(
    bool(MISSING), reason=f"needs {', '.join(MISSING)} (scripts/install --dev installs them)"
)
_LIST = """
import contextlib, json, sys, secretstorage
with contextlib.closing(secretstorage.dbus_init()) as bus:
    items = secretstorage.search_items(bus, {"service": sys.argv[1]})
    print(json.dumps([[i.get_attributes()["username"], i.get_secret().decode()] for i in items]))
"""


class SecretService:
    """One private bus with gnome-keyring on it, owned by `user` (None: the current user)."""

    def __init__(self, user: str | None = None) -> None:
        self.user = user
        self.dir = Path(tempfile.mkdtemp(prefix="krate-secrets-"))
        self.dir.chmod(0o700)
        (self.dir / "data").mkdir(mode=0o700)
        (self.dir / "run").mkdir(mode=0o700)
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.dir, self.dir / "data", self.dir / "run"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.bus: subprocess.Popen | None = None
        self.keyring: subprocess.Popen | None = None
        self.address = ""

    def _as_user(self) -> dict:
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _daemon_env(self) -> dict[str, str]:
        home = pwd.getpwnam(self.user).pw_dir if self.user else os.environ.get("HOME", "/")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
        env["XDG_DATA_HOME"] = str(self.dir / "data")  # keyrings live here, not in HOME
        env["XDG_RUNTIME_DIR"] = str(self.dir / "run")
        if self.address:
            env["DBUS_SESSION_BUS_ADDRESS"] = self.address
        return env

    def start(self) -> SecretService:
        socket = self.dir / "bus"
        self.bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1",
             f"--address=unix:path={socket}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self._daemon_env(), text=True,
            **self._as_user(),
        )  # fmt: skip
        self.address = self.bus.stdout.readline().strip()
        if not self.address:
            raise RuntimeError("dbus-daemon printed no address")
        self.keyring = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=self._daemon_env(), **self._as_user(),
        )  # fmt: skip
        self.keyring.stdin.write(b"keyring-test-password")
        self.keyring.stdin.close()
        deadline = time.monotonic() + 20
        while not self._owned():
            if time.monotonic() > deadline or self.keyring.poll() is not None:
                self.stop()
                raise RuntimeError("gnome-keyring-daemon did not take org.freedesktop.secrets")
            time.sleep(0.05)
        return self

    def _owned(self) -> bool:
        done = subprocess.run(
            ["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
             "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
             "string:org.freedesktop.secrets"],
            env=self._daemon_env(), capture_output=True, text=True, **self._as_user(),
        )  # fmt: skip
        return "boolean true" in done.stdout

    def stop(self) -> None:
        for proc in (self.keyring, self.bus):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """An environment for `krate` that uses this service through keyring's default."""
        env = dict(os.environ if base is None else base)
        env.pop("PYTHON_KEYRING_BACKEND", None)  # krate's own choice: SecretService on Linux
        env["DBUS_SESSION_BUS_ADDRESS"] = self.address
        env.update(extra)
        return env

    def _tool(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["secret-tool", *args], input=input, env=self._daemon_env(),
            capture_output=True, text=True, timeout=30, **self._as_user(),
        )  # fmt: skip

    def store(self, service: str, account: str, secret: str) -> None:
        """Write an entry the way keyring does (attributes service and username)."""
        done = self._tool(
            "store",
            "--label",
            f"{service} {account}",
            "service",
            service,
            "username",
            account,
            input=secret,
        )
        assert done.returncode == 0, done.stderr

    def lookup(self, service: str, account: str) -> str | None:
        done = self._tool("lookup", "service", service, "username", account)
        return done.stdout if done.returncode == 0 else None

    def entries(self, service: str = "krate") -> dict[str, dict]:
        """Every entry of `service`, account -> the decoded JSON secret krate wrote.

        Read with secretstorage on the bus (secret-tool's listing splits attributes and
        secrets between stdout and stderr, so it cannot be paired reliably).
        """
        done = subprocess.run(
            [sys.executable, "-c", _LIST, service], env=self._daemon_env(),
            capture_output=True, text=True, timeout=30, **self._as_user(),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return {account: json.loads(secret) for account, secret in json.loads(done.stdout)}

    def clear(self) -> None:
        for service in ("krate", "other"):
            self._tool("clear", "service", service)
