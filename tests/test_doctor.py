"""`krate doctor`: passes on a healthy install; fails with the right fix on each kind of damage.

Everything runs for real: the installed `krate` in a subprocess, a real bubblewrap
sandbox, a real SQLite file damaged on disk, a real Secret Service (gnome-keyring on a
private D-Bus bus: the `keychain` fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from krate import doctor
from tests.conftest import run_krate

BWRAP = shutil.which("bwrap")
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed")


def run_doctor(*args: str, env: dict | None = None):
    done = run_krate("doctor", "--json", *args, env=env)
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    return done, {c["name"]: c for c in report["checks"]}, report


def _memory_cgroup() -> bool:
    from krate.sandbox import cgroup

    return cgroup.find() is not None


def test_doctor_says_whether_memory_limits_can_be_enforced(ordinary_user, user_tmp):
    done, checks, _ = run_doctor()
    memory = checks["memory limits"]
    if _memory_cgroup():
        assert memory["status"] == "ok" and "enforced by a per-run cgroup" in memory["detail"]
    else:
        assert memory["status"] == "warn" and "refused" in memory["detail"]
    if ordinary_user is None:
        return
    env = {"PATH": os.environ["PATH"], "KRATE_HOME": str(user_tmp / "k"), "HOME": str(user_tmp)}
    done = run_krate("doctor", "--json", env=env, user=ordinary_user)
    memory = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["memory limits"]
    # this machine delegates no cgroup to an ordinary user
    assert memory["status"] == "warn", memory
    assert "cannot be enforced" in memory["detail"] and "systemd-run --user" in memory["fix"]


def _vm_status() -> str:
    from krate.sandbox import vm

    return "ok" if all(p.found for p in vm.status()) else "warn"


def test_doctor_names_a_missing_micro_vm_part_and_its_install_command(monkeypatch, tmp_path):
    from krate import doctor
    from krate.paths import Paths
    from krate.sandbox import vm

    parts = [vm.Part("qemu", None, "`sudo apt-get install qemu-system-x86`"),
             vm.Part("busybox", "/bin/busybox", "")]  # fmt: skip
    monkeypatch.setattr(vm, "status", lambda plat=None: parts)
    check = doctor.check_vm(Paths(tmp_path, tmp_path), "linux")
    assert check.status == "warn" and "missing qemu" in check.detail
    assert check.fix == "`sudo apt-get install qemu-system-x86`"


def healthy_home(env: dict | None = None) -> None:
    for text in ("first", "second", "third"):
        assert run_krate("audit", "note", text, env=env).returncode == 0


@needs_bwrap
def test_doctor_passes_on_a_healthy_install(krate_home, keychain):
    env = keychain.env()
    healthy_home(env)
    head = run_krate("audit", "head", env=env).stdout
    done, checks, report = run_doctor(env=env)
    assert done.returncode == 0, done.stderr
    assert report["ok"] is True
    assert {name: c["status"] for name, c in checks.items()} == {
        "sandbox": "ok",
        "memory limits": "ok" if _memory_cgroup() else "warn",
        "terminal": "ok",
        "micro-vm": _vm_status(),
        "database": "ok",
        "event chain": "ok",
        "permissions": "ok",
        "pending deletions": "ok",
        "keychain": "ok",
    }
    assert "bubblewrap" in checks["sandbox"]["detail"]
    assert checks["event chain"]["detail"].startswith("3 events, chain intact")
    # Human output: one line per check, nothing on stderr, and doctor recorded nothing.
    human = run_krate("doctor", env=env)
    assert human.returncode == 0 and human.stderr == ""
    statuses = [line.split()[0] for line in human.stdout.splitlines()]
    memory = "ok" if _memory_cgroup() else "warn"
    assert statuses == ["ok", memory, "ok", _vm_status(), *["ok"] * 5]
    assert "seccomp filter refuses TIOCSTI" in checks["terminal"]["detail"]
    assert run_krate("audit", "head", env=env).stdout == head


@needs_bwrap
def test_doctor_on_a_fresh_machine_creates_nothing(krate_home):
    done, checks, _ = run_doctor()
    assert done.returncode == 0, done.stderr
    assert checks["database"]["detail"].startswith("no database yet")
    assert not krate_home.exists(), "doctor must only look"


@needs_bwrap
def test_doctor_fails_on_a_corrupted_database(krate_home):
    healthy_home()
    db = krate_home / "krate.db"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    data = bytearray(db.read_bytes())
    assert len(data) > 8 * 4096
    data[3 * 4096 : 8 * 4096] = b"\xa5" * (5 * 4096)  # b-tree pages overwritten on disk
    db.write_bytes(bytes(data))
    done, checks, report = run_doctor()
    assert done.returncode == 1
    assert report["ok"] is False
    assert checks["database"]["status"] == "fail"
    assert "is damaged" in checks["database"]["detail"]
    assert f"mv '{db}' '{db}.damaged'" in checks["database"]["fix"]
    assert checks["event chain"]["status"] == "fail"
    assert "krate: doctor found problems: database, event chain" in done.stderr


@needs_bwrap
def test_doctor_fails_on_a_file_that_is_not_a_database(krate_home):
    healthy_home()
    (krate_home / "krate.db").write_bytes(b"definitely not SQLite" * 1000)
    done, checks, _ = run_doctor()
    assert done.returncode == 1
    assert checks["database"]["status"] == "fail"
    assert ".damaged" in checks["database"]["fix"]


@needs_bwrap
def test_doctor_fails_on_a_tampered_event(krate_home):
    healthy_home()
    conn = sqlite3.connect(krate_home / "krate.db")
    conn.execute('UPDATE events SET data = \'{"message":"forged"}\' WHERE seq = 2')
    conn.commit()
    conn.close()
    done, checks, _ = run_doctor()
    assert done.returncode == 1
    assert checks["database"]["status"] == "ok"  # SQLite is fine; the record is not
    chain = checks["event chain"]
    assert chain["status"] == "fail"
    assert chain["detail"].startswith("chain broken at event 2")
    assert "krate audit show 2" in chain["fix"] and "krate-evidence.db" in chain["fix"]


@needs_bwrap
@pytest.mark.parametrize("target", ["folder", "database"])
def test_doctor_fails_on_wrong_permissions(krate_home, target):
    healthy_home()
    path = krate_home if target == "folder" else krate_home / "krate.db"
    path.chmod(0o755 if target == "folder" else 0o644)
    done, checks, _ = run_doctor()
    assert done.returncode == 1
    perms = checks["permissions"]
    assert perms["status"] == "fail"
    assert str(path) in perms["detail"] and "readable by group or others" in perms["detail"]
    assert perms["fix"].startswith(f"chmod -R go-rwx '{krate_home}'")
    # The fix, run as printed, fixes it.
    subprocess.run(perms["fix"], shell=True, check=True)
    assert run_doctor()[1]["permissions"]["status"] == "ok"


def test_permissions_check_names_files_someone_else_owns(krate_home):
    healthy_home()
    from krate.paths import Paths

    check = doctor.check_permissions(Paths(krate_home, krate_home), uid=os.getuid() + 4242)
    assert check.status == "fail"
    assert "not owned by you" in check.detail
    assert 'sudo chown -R "$(id -un)"' in check.fix


def test_doctor_fails_when_bubblewrap_is_missing(krate_home, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done, checks, _ = run_doctor(env=dict(os.environ, PATH=str(empty)))
    assert done.returncode == 1
    sandbox = checks["sandbox"]
    assert sandbox["status"] == "fail"
    assert sandbox["detail"].startswith("bubblewrap (bwrap) is not on PATH")
    assert "apt-get install bubblewrap" in sandbox["fix"]


def test_doctor_names_disabled_user_namespaces_when_the_sandbox_cannot_start(tmp_path):
    """A bwrap that fails like it does when the kernel refuses user namespaces."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proc = tmp_path / "proc"
    (proc / "sys" / "user").mkdir(parents=True)
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "user" / "max_user_namespaces").write_text("0\n")
    (proc / "sys" / "kernel" / "unprivileged_userns_clone").write_text("1\n")
    check = doctor.check_sandbox(str(bin_dir), "linux", proc)
    assert check.status == "fail"
    assert "setting up uid map: Permission denied" in check.detail
    assert "user.max_user_namespaces = 0" in check.detail
    assert check.fix.startswith("sudo sysctl -w user.max_user_namespaces=")
    (proc / "sys" / "kernel" / "unprivileged_userns_clone").write_text("0\n")
    (proc / "sys" / "user" / "max_user_namespaces").write_text("15000\n")
    check = doctor.check_sandbox(str(bin_dir), "linux", proc)
    assert "kernel.unprivileged_userns_clone = 0" in check.detail
    assert "sudo sysctl -w kernel.unprivileged_userns_clone=1" in check.fix
    (proc / "sys" / "kernel" / "unprivileged_userns_clone").write_text("1\n")
    check = doctor.check_sandbox(str(bin_dir), "linux", proc)
    assert check.status == "fail" and "container" in check.fix


@needs_bwrap
def test_keyring_write_test_stores_and_removes_a_throwaway_entry(krate_home, keychain):
    done, checks, _ = run_doctor("--keyring-write-test", env=keychain.env())
    assert done.returncode == 0, done.stderr
    assert checks["keychain"]["status"] == "ok"
    assert "stored, read back and removed a test entry" in checks["keychain"]["detail"]
    assert keychain.entries() == {}, "the throwaway entry was left behind"


@needs_bwrap
def test_an_unusable_keychain_warns_and_fails_only_when_tested(krate_home):
    env = dict(os.environ, PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    done, checks, _ = run_doctor(env=env)
    assert done.returncode == 0, done.stderr
    assert checks["keychain"]["status"] == "warn"
    assert "only `krate login` and `krate push` need it" in checks["keychain"]["detail"]
    assert checks["keychain"]["fix"]
    done, checks, _ = run_doctor("--keyring-write-test", env=env)
    assert done.returncode == 1
    assert checks["keychain"]["status"] == "fail"


@needs_bwrap
def test_pending_deletions_are_reported_and_overdue_ones_fail(krate_home):
    healthy_home()
    assert run_krate("data", "delete", "--yes").returncode == 0
    done, checks, _ = run_doctor()
    assert done.returncode == 0, done.stderr
    assert "restorable until" in checks["pending deletions"]["detail"]
    # Every krate invocation purges what is past the grace period; one that is still on
    # disk afterwards (the purge failed) is a problem. Seen from eight days later:
    from krate.paths import Paths

    later = datetime.now(UTC) + timedelta(days=8)
    check = doctor.check_pending(Paths(krate_home, krate_home), later)
    assert check.status == "fail"
    assert "past their grace period" in check.detail and "purge" in check.fix


LOCKED_TRIAL = (
    "import json, shutil\n"
    "from krate import doctor\n"
    "from krate.netguard import lockdown\n"
    "state = lockdown.apply()\n"
    "print(json.dumps([state['applied'], doctor._trial('bubblewrap', shutil.which('bwrap'))]))\n"
)


def _filters(text: str) -> tuple[int, int]:
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return int(fields["Seccomp_filters"]), int(fields["NoNewPrivs"])


@needs_bwrap
@pytest.mark.parametrize("who", ["root", "user"])
def test_doctor_sandbox_trial_works_inside_doctors_own_lockdown(who, ordinary_user, user_tmp):
    """A trial started inside a lockdown (doctor's fallback when its early start failed) still
    works: unlike a run with the egress proxy (whose bridge needs a loopback IP socket), the
    trial needs no IP socket. Checked for real, both ways."""
    if who == "user" and ordinary_user is None:
        pytest.skip("the ordinary-user variant needs root to create the user")
    user = ordinary_user if who == "user" else None
    kw = {"user": user, "group": user, "extra_groups": []} if user else {}
    done = subprocess.run(
        [sys.executable, "-c", LOCKED_TRIAL],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=user_tmp,
        env={"PATH": os.environ["PATH"], "HOME": str(user_tmp)},
        **kw,
    )
    assert done.returncode == 0, done.stderr
    applied, problem = json.loads(done.stdout)
    assert applied is True  # the trial really ran inside the lockdown
    assert problem is None  # and the sandbox printed its marker


@needs_bwrap
def test_doctor_sandbox_trial_starts_no_egress_bridge(monkeypatch):
    """What makes the trial safe inside the lockdown: its sandbox has no network at all."""
    from krate.sandbox import bwrap

    seen = []
    real = bwrap.command

    def spy(spec, *args, **kw):
        seen.append(spec)
        return real(spec, *args, **kw)

    monkeypatch.setattr(bwrap, "command", spy)
    assert doctor._trial("bubblewrap", BWRAP) is None
    assert [spec.network for spec in seen] == ["none"]


@needs_bwrap
@pytest.mark.parametrize("who", ["root", "user"])
def test_doctors_sandbox_test_is_started_before_doctor_locks_itself_down(
    who, ordinary_user, user_tmp
):
    """The test command's sandbox is not born inside doctor's own lockdown.

    On macOS the lockdown is a Seatbelt profile and sandbox-exec inside it is refused
    (`forbidden-sandbox-reinit`); here a `bwrap` planted first on PATH records its own
    seccomp state and hands over to the real one, and a planted `true` (run by the
    memory check after the lockdown) shows that doctor did lock down. It does not
    cover macOS itself: that sandbox-exec started before `sandbox_init` then works.
    """
    if who == "user" and ordinary_user is None:
        pytest.skip("needs root to run as the ordinary user")
    user = ordinary_user if who == "user" else None
    planted = user_tmp / "bin"
    planted.mkdir()
    for name, real in (("bwrap", BWRAP), ("true", shutil.which("true"))):
        wrapper = planted / name
        wrapper.write_text(f'#!/bin/sh\ncat /proc/self/status > {user_tmp}/{name}.status\n'
                           f'exec {real} "$@"\n')  # fmt: skip
        wrapper.chmod(0o755)
    if user:
        from tests.conftest import chown_tree

        chown_tree(user_tmp, user)
    env = {"PATH": f"{planted}:{os.environ['PATH']}", "KRATE_HOME": str(user_tmp / "k"),
           "HOME": str(user_tmp)}  # fmt: skip
    done = run_krate("doctor", "--json", env=env, user=user)
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["sandbox"]["status"] == "ok", checks["sandbox"]
    with open("/proc/self/status") as f:
        base = _filters(f.read())
    assert _filters((user_tmp / "bwrap.status").read_text()) == base  # born before the lockdown
    late = user_tmp / "true.status"
    assert late.exists() == (checks["memory limits"]["status"] == "ok")
    if late.exists():  # the memory check ran `true` after it: inside the lockdown
        filters, no_new_privs = _filters(late.read_text())
        assert filters > base[0] and no_new_privs == 1
