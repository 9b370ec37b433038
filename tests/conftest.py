"""Shared fixtures: every test gets its own KRATE_HOME; helpers to run the real `krate`."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from krate.cli.main import main

KRATE = shutil.which("krate", path=str(Path(sys.executable).parent)) or "krate"
TEST_USER = "krate-test"
# krate as root refuses a workload in a root-owned folder unless told to run it as host root:
# tests that run as root in their own tmp folders do so on purpose, and say so.
AS_ROOT = ("--as-root",) if os.geteuid() == 0 else ()


def as_root(args) -> list[str]:
    """`args` with --as-root after `run`/`build` when the tests run as root."""
    args = list(args)
    if AS_ROOT and args[:1] in (["run"], ["build"]):
        return [args[0], *AS_ROOT, *args[1:]]
    return args


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    """Poll `predicate` until it returns something true, and return that; fail after `timeout`.

    Tests wait for a condition rather than sleep a fixed time and hope: under load a fixed
    sleep is too short (flaky), and when idle it is too long (slow).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def krate_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "krate-home"
    monkeypatch.setenv("KRATE_HOME", str(home))
    monkeypatch.delenv("NO_COLOR", raising=False)
    return home


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def cli(capsys):
    """Run krate's entry point in-process; returns code, stdout and stderr."""

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def run_krate(
    *args: str, env: dict | None = None, user: str | None = None, **kw
) -> subprocess.CompletedProcess:
    """Run the installed `krate` executable as a real subprocess."""
    full_env = dict(os.environ if env is None else env)
    if user is not None:
        # Drop the group and supplementary groups too, as a real login would have them.
        kw.update(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])
        full_env.setdefault("HOME", pwd.getpwnam(user).pw_dir)
    kw.setdefault("timeout", 120)
    return subprocess.run([KRATE, *args], env=full_env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def ordinary_user() -> str | None:
    """An unprivileged account for permission and sandbox tests (created when running as root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/sh", TEST_USER],
            check=True,
            capture_output=True,
        )
    return TEST_USER


@pytest.fixture(params=["root", "user"])
def box(request, ordinary_user):
    """A home with secrets and a project (run_support.Box), run as root and as the ordinary user.

    The root box passes `--as-root` to run and build: it tests a root workload on purpose.
    """
    from .run_support import Box

    if request.param == "user" and ordinary_user is None:
        pytest.skip("the ordinary-user variant needs root to create the user")
    b = Box(ordinary_user if request.param == "user" else None)
    yield b
    b.cleanup()


@pytest.fixture
def password() -> str:
    return "pw-" + secrets.token_urlsafe(12)


@pytest.fixture
def registry(tmp_path, password):
    """A real registry server on loopback with one account (registry_support.USER)."""
    from .registry_server import Registry
    from .registry_support import USER

    reg = Registry(tmp_path / "registry", users={USER: password}).start()
    yield reg
    reg.kill()  # also ends a registry a test paused


@pytest.fixture
def user_tmp(ordinary_user):
    """A scratch folder the ordinary user owns (pytest's own tmp_path is private to root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="krate-user-"))
    path.chmod(0o755)
    if ordinary_user:
        chown_tree(path, ordinary_user)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


@pytest.fixture
def listener():
    """A real TCP server on loopback in the (unlocked) test process; ((host, port), accepted)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname(), accepted
    stop.set()
    thread.join()
    server.close()


@pytest.fixture(scope="session")
def installed():
    """krate installed as a user installs it: a wheel, not editable, in its own venv.

    Its dependencies come from this test environment through a path-only .pth line
    (nothing is downloaded). In such an install krate lives in site-packages, beside
    every third-party package: the folder the hardening tests plant hostile files in.
    Yields the venv; its `bin/krate` is the command.
    """
    import site
    import sysconfig
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="krate-installed-", dir="/var/tmp"))
    os.chmod(root, 0o755)  # the ordinary user runs it too (pytest's own tmp is private)
    venv, wheels = root / "venv", root / "wheels"
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels),
         str(repo)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("krate-*.whl")
    subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index",
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", where], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    deps = [p for p in site.getsitepackages() if p != sysconfig.get_path("stdlib")]
    (purelib / "zz-test-dependencies.pth").write_text("\n".join(deps) + "\n")
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0)) & 0o7777)
    yield venv
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def secret_service():
    """gnome-keyring on a private D-Bus session bus, for this test run (tests/secret_service.py)."""
    from .secret_service import MISSING, SecretService

    if MISSING:
        pytest.skip(f"needs {', '.join(MISSING)} (scripts/install --dev installs them)")
    service = SecretService().start()
    yield service
    service.stop()


@pytest.fixture
def keychain(secret_service):
    """The real Secret Service, emptied of krate's entries before and after the test."""
    secret_service.clear()
    yield secret_service
    secret_service.clear()


@pytest.fixture
def terminals():
    """Pseudo-terminals a test opened (terminal_support.Terminal), closed whatever happened."""
    opened: list = []
    yield opened
    for terminal in opened:
        terminal.close()
