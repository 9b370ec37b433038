"""scripts/macos-smoke, run for real on Linux: the script's own logic, not macOS's verdicts.

Against the installed krate under bubblewrap (as root and as the ordinary user) every probe
that is not macOS-only must pass, the macOS-only ones must say "skipped", and what the script
planted must be gone. Against a "krate" that runs the workload with no sandbox at all, the
script must fail, naming the probes that caught it, and still clean up. What the probes
find on a Mac (Seatbelt's answers) is not checked here: only a Mac can (docs/install.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import KRATE, wait_for
from .run_support import SECRET

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "macos-smoke"
needs_bwrap = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")
# The unsandboxed-krate tests expect Linux's rows (on macOS more probes run, named otherwise).
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's probe set")

MACOS_ONLY = {
    "read it via /System/Volumes/Data",
    "read it as ~/.SSH (case)",
    "write .envrc (not there yet)",
    "write krate.toml (not there yet)",
}
EXPECTATIONS = {"allowed", "denied", "no secret", "exit 0"}


def smoke(*args: str, env: dict, user: str | None = None, cwd=None) -> tuple[int, dict, str]:
    """Run the script; (exit status, {probe: (expect, result, detail)}, stdout)."""
    kw = {}
    if user:
        import pwd

        kw = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,  # no terminal, whatever pytest was started from
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )
    return out.returncode, table(out.stdout), out.stdout + out.stderr


def table(text: str) -> dict:
    """{probe: (expect, result, detail)} from the script's table."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}(allowed|denied|no secret|exit 0)\s+(\S+)\s*(.*)$", line)
        if m:
            rows[m[1]] = (m[2], m[3], m[4].rstrip())
    return rows


@needs_bwrap
def test_every_probe_that_linux_can_answer_passes_under_bubblewrap(box):
    run_args = ["--run-arg=--as-root"] if box.as_root else []
    code, rows, text = smoke(
        "--krate", KRATE, *run_args, env=box.env(), user=box.user, cwd=box.home
    )
    assert code == 0, text
    assert len(rows) == 24, text
    assert {expect for expect, _, _ in rows.values()} <= EXPECTATIONS
    for name, (_expect, result, detail) in rows.items():
        if name in MACOS_ONLY:
            assert result == "skipped" and detail.startswith("macOS only"), (name, text)
        elif name == "tty: stty on your terminal":
            assert result == "skipped" and detail.startswith("no tty"), text  # stdin: /dev/null
        else:
            assert result == "pass", (name, text)
    # An interactive run keeps the terminal: the typed line is read inside.
    assert rows["tty: read a typed line (own pty)"][2] == "read the terminal", text
    assert rows["dev server on :: reached inside"][2].split()[1].startswith("127.0.0.1:"), text
    # A Mac user's first day: the python3 REPL and vim on a terminal, npm install.
    assert rows["python3 REPL on a pty"][2] == "print(6*7) answered 42, exit() exit 0", text
    assert rows["vim on a pty: insert, :wq"][2].endswith("the file holds hello"), text
    assert rows["npm install (offline, a file: dependency)"][2].startswith("node_modules/dep"), text
    # What it planted is gone; what was there stays.
    assert not list(box.home.glob("krate-smoke-*")), text
    assert sorted(p.name for p in (box.home / ".ssh").iterdir()) == ["id_ed25519"]
    assert box.key.read_text() == SECRET + "\n"


@needs_bwrap
def test_with_a_terminal_the_stty_probe_sets_it_inside(box):
    """The script itself on a pseudo-terminal, as a maintainer at a terminal runs it."""
    import pty
    import pwd

    argv = [sys.executable, str(SCRIPT), "--krate", KRATE]
    argv += ["--run-arg=--as-root"] if box.as_root else []
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(box.home)
            if box.user:
                entry = pwd.getpwnam(box.user)
                os.setgroups([])
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
            os.execve(argv[0], argv, box.env())
        finally:
            os._exit(127)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the script and everything on its terminal are gone
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = out.decode(errors="replace").replace("\r", "")
    assert os.waitstatus_to_exitcode(status) == 0, text
    expect, result, detail = table(text)["tty: stty on your terminal"]
    assert (expect, result) == ("allowed", "pass"), text
    assert detail == "stty set the terminal", text


FAKE_KRATE = """#!/bin/sh
# A "krate" with no sandbox: runs the workload directly in --workdir (and, for a workload
# that reads the terminal, stops as a background job would: sleeps).
[ "$1" = run ] || exit 0
shift
while [ $# -gt 0 ]; do
  case $1 in --workdir) cd "$2" || exit 125; shift 2 ;; --) shift; break ;; *) shift ;; esac
done
case "$*" in *"</dev/tty"*) exec sleep 600 ;; esac
exec "$@"
"""


@linux_only
def test_a_krate_without_a_sandbox_fails_the_smoke_and_nothing_is_left_behind(tmp_path):
    fake = tmp_path / "krate"
    fake.write_text(FAKE_KRATE)
    fake.chmod(0o755)
    home = tmp_path / "home"  # no ~/.ssh: the script makes it, and removes it again
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    code, rows, text = smoke("--krate", str(fake), "--timeout", "5", env=env, cwd=home)
    assert code == 1, text
    failed = {name for name, (_, result, _) in rows.items() if result == "FAIL"}
    assert failed == {
        "read hidden ~/.ssh file",
        "other processes' environment (/proc)",
        "ln of a hidden file into the workspace",
        "write .envrc (there)",
        "write krate.toml (there)",
        "tty: read a typed line (own pty)",
    }, text
    assert rows["read hidden ~/.ssh file"][2].startswith("the secret was read through"), text
    assert rows["tty: read a typed line (own pty)"][2].startswith("hung"), text
    assert rows["other processes' environment (/proc)"][2].startswith("read krate's env"), text
    assert "krate-smoke-secret-" not in text and "krate-smoke-marker-" not in text
    assert text.rstrip().endswith("24 probes: 6 failed")
    assert os.listdir(home) == [], text  # secret, ~/.ssh it made, workspace: all removed


def test_no_krate_is_a_usage_error(tmp_path):
    code, _, text = smoke("--krate", str(tmp_path / "nope"), env={"PATH": "/usr/bin:/bin"})
    assert code == 2 and text.strip() == (
        "macos-smoke: no krate executable; run scripts/install or pass --krate"
    )


def test_stopped_midway_it_still_removes_what_it_planted(tmp_path):
    fake = tmp_path / "krate"
    fake.write_text('#!/bin/sh\n[ "$1" = run ] && exec sleep 600\nexit 0\n')
    fake.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--krate", str(fake)],
        env=env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: list(home.glob(".ssh/krate-smoke-*")), what="the planted secret")
    proc.terminate()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + 15, out
    assert os.listdir(home) == [], out


def load_script():
    """The script as a module, to check its macOS verdicts with the answers a Mac would give."""
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    spec = spec_from_loader("macos_smoke", SourceFileLoader("macos_smoke", str(SCRIPT)))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("krate-smoke:procargs read 0, refused 2 (errno 1)", "pass"),  # Seatbelt: EPERM
        ("krate-smoke:procargs read 1, refused 1 (errno 1)", "FAIL"),  # one was readable
        ("krate-smoke:procargs read 1 42=MARKER, refused 1 (errno 1)", "FAIL"),
        ("", "FAIL"),  # the probe did not run
    ],
)
def test_the_macos_verdict_on_procargs(monkeypatch, tmp_path, answer, verdict):
    mod = load_script()
    monkeypatch.setattr(mod, "MACOS", True)
    smoke = mod.Smoke(str(tmp_path / "krate"), [], 5)
    monkeypatch.setattr(
        smoke, "py", lambda *a, **k: subprocess.CompletedProcess(a, 0, answer + "\n", "")
    )
    smoke.probe_procargs()
    ((name, expect, result, _),) = smoke.rows
    assert (name, expect, result) == (
        "other processes' argv/env (kern.procargs2)",
        "denied",
        verdict,
    )


@pytest.mark.parametrize(
    ("code", "output", "verdict"),
    [
        (0, "krate-smoke:ready\r\nTOKEN\r\nkrate-smoke:ok line=TOKEN\r\n", "pass"),
        (2, "krate-smoke:ready\r\nsh: /dev/tty: Device not configured\r\n", "FAIL"),
        (-1, "krate-smoke:ready\r\n", "FAIL"),  # stopped as a background job: hung
    ],
)
def test_the_macos_verdict_on_reading_the_terminal(monkeypatch, tmp_path, code, output, verdict):
    mod = load_script()
    monkeypatch.setattr(mod, "MACOS", True)
    smoke = mod.Smoke(str(tmp_path / "krate"), [], 5)
    smoke.ws = tmp_path
    smoke.token = "TOKEN"
    monkeypatch.setattr(mod, "_in_pty", lambda *a: (code, output))
    smoke.probe_tty(own=True)
    ((_, expect, result, _),) = smoke.rows
    assert (expect, result) == ("allowed", verdict)
