"""Attacks a hostile workload would try; each must fail, and where the policy decided, be recorded.

Run as root and as the ordinary user `krate-test`: root must not be stronger.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from .run_support import SECRET, Box, snapshot

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")


def _hidden_recorded(box: Box, path) -> None:
    run = box.last_run()
    assert str(path) in run["layout"]["hidden"], run["layout"]


# ---------------------------------------------------------------- reading secrets


def test_read_key_directly_via_symlink_and_via_proc_self_root(box):
    (box.ws / "link").symlink_to(box.key)
    if box.user:
        os.lchown(box.ws / "link", *_ids(box.user))
    script = (
        f"cat {box.key}; cat link; cat /proc/self/root{box.key}; cat /proc/1/root{box.key}; "
        f"ls -a {box.key.parent}; echo end"
    )
    out = box.sh(script)
    assert SECRET not in out.stdout and SECRET not in out.stderr
    assert out.stdout.endswith("end\n")
    assert "id_ed25519" not in out.stdout  # the hidden folder is empty
    _hidden_recorded(box, box.key.parent)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def test_hard_link_to_a_secret_refuses_the_run_and_records_it(box):
    os.link(box.key, box.ws / "notes.txt")
    out = box.sh("cat notes.txt")
    assert out.returncode == 125
    assert SECRET not in out.stdout and str(box.key) in out.stderr
    assert "--allow-hardlinked-secrets" in out.stderr
    run = box.last_run()
    assert run["status"] == "refused" and run["exit_code"] == 125
    [decision] = [d for d in run["decisions"] if d["area"] == "filesystem"]
    assert (decision["verdict"], decision["subject"]) == ("deny", str(box.key))
    # accepting the risk runs it, and that decision is recorded too
    out = box.sh("true", "--allow-hardlinked-secrets")
    assert out.returncode == 0
    [decision] = [d for d in box.last_run()["decisions"] if d["area"] == "filesystem"]
    assert decision["verdict"] == "allow" and decision["rule"] == "--allow-hardlinked-secrets"


def test_hard_link_past_the_scan_cap_still_refuses_the_run(box):
    """The scan used to stop at its entry cap and let a link placed after it through."""
    import sys

    for i in range(30):
        (box.key.parent / f"cache{i}").write_text("")
    if box.user:
        _chown_all(box.key.parent, box.user)
    os.link(box.key, box.ws / "notes.txt")
    code = (
        "import sys; from krate.sandbox import hardlinks; hardlinks.MAX_ENTRIES = 0; "
        "from krate.cli.main import main; sys.exit(main())"
    )
    kw = {"group": _ids(box.user)[1], "extra_groups": []} if box.user else {}
    out = subprocess.run(
        [sys.executable, "-c", code, *box.args(("run",)), "--", "cat", "notes.txt"], cwd=box.ws,
        env=box.env(), user=box.user, capture_output=True, text=True, timeout=120, **kw,
    )  # fmt: skip
    assert out.returncode == 125, out.stderr
    assert SECRET not in out.stdout and str(box.key) in out.stderr
    run = box.last_run()
    assert run["status"] == "refused" and run["exit_code"] == 125
    denied = [d["subject"] for d in run["decisions"] if d["area"] == "filesystem"]
    assert str(box.key) in denied


def _chown_all(folder, user: str) -> None:
    for path in (folder, *folder.iterdir()):
        os.chown(path, *_ids(user))


# ---------------------------------------------------------------- writing outside / protected files


def test_writes_outside_the_workspace_and_to_protected_files_fail(box):
    marker = f"krate-attack-{os.getpid()}-{time.time_ns()}"
    ws_before = snapshot(box.ws)
    box.krate_home.mkdir()
    if box.user:
        os.chown(box.krate_home, *_ids(box.user))
    home_before = sorted(os.listdir(box.home))
    attempts = [
        f"touch {box.home}/planted",
        f"echo x >> {box.home}/.bashrc",
        "touch /etc/krate-planted",
        "echo evil > .git/hooks/post-checkout",
        "echo evil >> .git/hooks/pre-commit",
        "echo '[core] hooksPath=/x' >> .git/config",
        "echo 'allow = [\"*\"]' >> krate.toml",
        "mv .git/hooks .git/hooks.old",
        "mv .git .git.old",
        "mv krate.toml krate.old",
        "rm -f krate.toml",
        "rm -rf .git/hooks",
        f"ln {box.key} stolen",
    ]
    script = "; ".join(f"if {a} 2>/dev/null; then echo 'WROTE: {a}'; fi" for a in attempts)
    # /tmp is the sandbox's own: writing there works and never reaches the host's /tmp
    out = box.sh(script + f"; touch /tmp/{marker}; echo ok > allowed.txt; echo done")
    assert "WROTE" not in out.stdout, out.stdout
    assert out.stdout.endswith("done\n")
    after = snapshot(box.ws)
    assert after.pop("allowed.txt") == b"ok\n"  # the workspace itself is writable
    # git's placeholders stay: empty folders and files that git treats as missing ones
    for new in set(after) - set(ws_before):
        assert new.startswith(".git/") and after.pop(new) in (None, b""), new
    assert after == ws_before
    assert sorted(os.listdir(box.home)) == home_before
    assert not os.path.exists("/etc/krate-planted") and not os.path.exists(f"/tmp/{marker}")
    layout = box.last_run()["layout"]
    assert str(box.ws / ".git" / "hooks") in layout["read_only"]
    assert str(box.ws / "krate.toml") in layout["read_only"]


# ---------------------------------------------------------------- privileges


def test_no_capabilities_no_devices_no_setuid_no_new_user_namespaces(box):
    suid = box.ws / "suid-id"
    shutil.copy("/usr/bin/id", suid)
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    script = (
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; "
        "if mknod ./null c 1 3 2>/dev/null; then echo MKNOD-OK; fi; "
        "./suid-id -u; "
        "if unshare -U true 2>/dev/null; then echo USERNS-OK; fi; "
        "if unshare -Ur true 2>/dev/null; then echo USERNS-ROOT-OK; fi; "
        "if unshare -m true 2>/dev/null; then echo MOUNTNS-OK; fi; "
        "if mount -t tmpfs none /mnt 2>/dev/null; then echo MOUNT-OK; fi; "
        "echo done"
    )
    out = box.sh(script)
    lines = out.stdout.splitlines()
    assert "CapEff:\t0000000000000000" in lines and "CapPrm:\t0000000000000000" in lines
    assert "CapBnd:\t0000000000000000" in lines and "NoNewPrivs:\t1" in lines
    for flag in ("MKNOD-OK", "USERNS-OK", "USERNS-ROOT-OK", "MOUNTNS-OK", "MOUNT-OK"):
        assert flag not in lines
    expected_uid = str(_ids(box.user)[0]) if box.user else "0"
    assert expected_uid in lines  # setuid did not change who we are
    # as root the uid is 0 but the setuid binary gained nothing either (CapEff above)
    assert lines[-1] == "done"


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("flags", [(), ("--no-network",)], ids=["default-policy", "no-network"])
def test_no_host_loopback_and_no_name_resolution(box, flags):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def serve():
        end = time.monotonic() + 8
        while time.monotonic() < end:
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=serve)
    thread.start()
    script = (
        "python3 - <<'EOF'\n"
        "import socket\n"
        f"for host in ('127.0.0.1', '::1', 'localhost'):\n"
        "    try:\n"
        f"        socket.create_connection((host, {port}), timeout=2); print('CONNECTED', host)\n"
        "    except OSError as e: print('refused', host)\n"
        "for name in ('example.com', 'pypi.org'):\n"
        "    try:\n"
        "        found = {a[4][0] for a in socket.getaddrinfo(name, 443)}\n"
        "        print('RESOLVED' if found - {'127.8.0.1'} else 'sandbox-dns', name)\n"
        "    except OSError: print('unresolved', name)\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=2); print('CONNECTED out')\n"
        "except OSError: print('unreachable')\n"
        "EOF\n"
    )
    try:
        out = box.sh(script, *flags)
    finally:
        thread.join()
        server.close()
    assert "CONNECTED" not in out.stdout and "RESOLVED" not in out.stdout, out.stdout
    assert "unresolved example.com" in out.stdout and "unreachable" in out.stdout
    # an allowed name resolves only through the sandbox's own DNS, to a sandbox-loopback
    # address that leads to the proxy (docs/egress.md); without network, not at all
    assert ("unresolved pypi.org" if flags else "sandbox-dns pypi.org") in out.stdout
    assert accepted == []
    assert box.last_run()["layout"]["network"] == ("none" if flags else "proxy")


# ---------------------------------------------------------------- environment


def test_stripped_secrets_are_not_in_the_environment_or_proc(box):
    token, aws = "gh-secret-value-123", "aws-secret-value-456"
    env = box.env(GITHUB_TOKEN=token, AWS_SECRET_ACCESS_KEY=aws, INNOCENT="ghp_" + "q" * 36)
    out = box.sh("env; cat /proc/1/environ; cat /proc/self/environ; ps eww 2>/dev/null", env=env)
    for value in (token, aws, "q" * 36):
        assert value not in out.stdout
    decisions = box.last_run()["decisions"]
    assert {"GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "INNOCENT"} <= {
        d["subject"] for d in decisions if d["area"] == "env" and d["verdict"] == "deny"
    }
    raw = (box.krate_home / "krate.db").read_bytes()
    assert token.encode() not in raw and aws.encode() not in raw


# ---------------------------------------------------------------- other processes


def test_cannot_see_signal_or_ptrace_processes_outside(box):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        script = (
            "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo; "
            f"if kill -0 {victim.pid} 2>/dev/null; then echo SIGNAL-OK; fi; "
            f"if kill -0 {os.getpid()} 2>/dev/null; then echo SIGNAL-TEST-OK; fi; "
            f"if cat /proc/{victim.pid}/cmdline 2>/dev/null; then echo SEE-OK; fi; "
            "python3 - <<'EOF'\n"
            "import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"for pid in ({victim.pid},):\n"
            "    r = libc.ptrace(16, pid, 0, 0)\n"
            "    print('PTRACE-OK' if r == 0 else 'ptrace', pid, r, ctypes.get_errno())\n"
            "EOF\n"
            "echo done"
        )
        out = box.sh(script)
        assert victim.poll() is None, "the victim was killed"
    finally:
        victim.kill()
        victim.wait()
    lines = out.stdout.splitlines()
    visible = [int(p) for p in lines[0].split()]
    assert max(visible) < 100 and victim.pid not in visible or victim.pid < 100
    for flag in ("SIGNAL-OK", "SIGNAL-TEST-OK", "SEE-OK", "PTRACE-OK"):
        assert not any(line.startswith(flag) for line in lines), out.stdout
    assert lines[-1] == "done"


def test_sandbox_does_not_outlive_a_killed_krate_even_when_it_ignores_signals(box):
    ready = box.ws / "ready"
    marker = f"9{os.getpid() % 1000}.{time.time_ns() % 1000}"
    proc = box.popen(
        "run", "--", "/bin/sh", "-c", f"trap '' INT TERM HUP; touch ready; sleep 5{marker}"
    )
    end = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < end
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        alive = [
            p for p in os.listdir("/proc")
            if p.isdigit() and marker.encode() in _cmdline(p)
        ]  # fmt: skip
        if not alive:
            break
        time.sleep(0.05)
    assert not alive


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
