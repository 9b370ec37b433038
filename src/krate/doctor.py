"""`krate doctor`: is this install healthy, and when not, exactly what to do about it.

Each check reports what it found and, for every problem, one fix the user can
carry out. Checks only look: they never write to the store or the data folder and
never migrate. The one exception is the keychain write test, run only when the
user asks for it: it stores and removes one throwaway entry. Never prints and never
reads os.environ: the CLI passes PATH, the keyring backend name and the platform.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from krate.doctor_trial import TRIAL_TIMEOUT_S, Trial, _trial
from krate.errors import KrateError
from krate.paths import Paths
from krate.plural import counted

OK, WARN, FAIL = "ok", "warn", "fail"
MAX_WALK = 200_000
MAX_SHOWN = 3
PROBE_ACCOUNT = "krate-doctor-probe"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


def diagnose(
    paths: Paths,
    *,
    path_env: str | None,
    keyring_backend: str,
    now: datetime,
    platform: str = sys.platform,
    keyring_write_test: bool = False,
    proc: Path = Path("/proc"),
    trial: Trial | None = None,
) -> Report:
    """Every check, in the order a user would fix them (`trial`: started at entry)."""
    database = check_database(paths)
    return Report(
        (
            check_sandbox(path_env, platform, proc, trial=trial),
            check_memory_limits(platform, proc),
            check_terminal(platform),
            check_vm(paths, platform),
            database,
            check_chain(paths, database_ok=database.status != FAIL),
            check_permissions(paths),
            check_pending(paths, now),
            check_keychain(paths, keyring_backend, write_test=keyring_write_test),
        )
    )


# ---------------------------------------------------------------- sandbox


def check_sandbox(
    path_env: str | None, platform: str, proc: Path = Path("/proc"), *, trial: Trial | None = None
) -> Check:
    """The backend is installed and really runs a command in a sandbox.

    `trial`: the test command started at entry (before the lockdown), if any.
    """
    from krate.sandbox.detect import detect

    found = detect(path=path_env, platform=platform)
    if found.backend == "none":
        return Check("sandbox", FAIL, found.install_hint, "run krate on macOS or Linux")
    if not found.available:
        what = (
            "bubblewrap (bwrap) is not on PATH"
            if found.backend == "bubblewrap"
            else ("sandbox-exec was not found")
        )
        return Check("sandbox", FAIL, f"{what}: `krate run` cannot isolate", found.install_hint)
    error = _trial(found.backend, found.executable, trial)
    if error is None:
        return Check(
            "sandbox", OK, f"{found.backend} ({found.executable}) ran a test command in a sandbox"
        )
    detail = f"{found.backend} ({found.executable}) could not run a test command: {error}"
    if found.backend != "bubblewrap":
        return Check(
            "sandbox",
            FAIL,
            detail,
            "check that sandbox-exec works: `sandbox-exec -n "
            "no-network true`; a managed Mac may forbid it (ask its administrator)",
        )
    blockers = userns_blockers(proc)
    if blockers:
        reasons = "; ".join(reason for reason, _ in blockers)
        return Check("sandbox", FAIL, f"{detail} ({reasons})", " and ".join(f for _, f in blockers))
    return Check(
        "sandbox",
        FAIL,
        detail,
        "bubblewrap needs unprivileged user namespaces: inside a container, allow them "
        "(e.g. docker run --security-opt seccomp=unconfined) or run krate on the host",
    )


def check_vm(paths: Paths, platform: str) -> Check:
    """`krate run --vm`: its parts (sandbox/vm.py) and the acceleration it will use. Optional:
    a missing part is a warning with the exact install command, never a failure."""
    from krate.sandbox import vm

    parts = vm.status(plat=platform)
    missing = [p for p in parts if p.found is None]
    if missing:
        names = ", ".join(p.name for p in missing)
        return Check(
            "micro-vm", WARN, f"`krate run --vm` cannot run here: missing {names}",
            "; ".join(p.hint for p in missing),
        )  # fmt: skip
    found = "; ".join(f"{p.name} {p.found}" for p in parts)
    return Check("micro-vm", OK, f"{found}; {vm.acceleration(paths.data_dir, platform)}")


def check_memory_limits(platform: str, proc: Path = Path("/proc")) -> Check:
    """Whether `limits.memory_mb` can be enforced: a real per-run cgroup, joined by `true`."""
    name = "memory limits"
    if platform != "linux":
        return Check(
            name,
            WARN,
            f"on {platform} limits.memory_mb is a per-process limit (RLIMIT_DATA) that does not "
            "count shared memory",
            "keep that in mind when you rely on limits.memory_mb there",
        )
    from krate.sandbox import cgroup

    place = cgroup.find(proc)
    if place is None:
        return Check(
            name,
            WARN,
            "limits.memory_mb cannot be enforced: no cgroup with the memory controller is "
            "delegated to you, so runs whose policy sets it are refused (exit 125)",
            "run krate as root, or from a systemd user session (`systemd-run --user --scope "
            "krate run ...`), or leave limits.memory_mb unset",
        )
    try:
        group = cgroup.RunCgroup.create(place, "doctor", 16)
        try:
            subprocess.run(["true"], preexec_fn=group.join(), check=True, timeout=TRIAL_TIMEOUT_S)
        finally:
            group.remove()
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(
            name,
            WARN,
            f"a memory cgroup in {place.parent} could not be used ({exc}), so runs whose "
            "policy sets limits.memory_mb fail (exit 125)",
            "check that the cgroup file system is writable by you, or leave limits.memory_mb unset",
        )
    return Check(name, OK, f"limits.memory_mb is enforced by a per-run {place.describe()}")


def check_terminal(platform: str) -> Check:
    """What keeps an interactive workload from typing into the terminal (TIOCSTI)."""
    name = "terminal"
    if platform != "linux":
        return Check(
            name,
            WARN,
            "interactive runs keep the terminal; on macOS nothing in the sandbox refuses "
            "TIOCSTI (terminal input injection)",
            "run untrusted interactive workloads with stdin redirected (`< /dev/null`)",
        )
    from krate.sandbox import bwrap

    defence = bwrap.terminal_defence()
    if defence is None:
        return Check(
            name,
            WARN,
            "interactive runs get a new session, without job control: no seccomp filter for "
            "this CPU, dev.tty.legacy_tiocsti is not 0, or /usr/bin/env lacks --default-signal",
            "set `sysctl dev.tty.legacy_tiocsti=0` (Linux 6.2+) to keep the terminal",
        )
    return Check(name, OK, f"interactive runs keep the terminal; {defence}")


def userns_blockers(proc: Path) -> list[tuple[str, str]]:
    """Kernel settings that stop unprivileged user namespaces, each with its fix."""
    found = []
    settings = (
        (
            "sys/kernel/unprivileged_userns_clone",
            lambda v: v == 0,
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)",
            "sudo sysctl -w kernel.unprivileged_userns_clone=1 (add it to /etc/sysctl.d/ to keep "
            "it after a reboot)",
        ),
        (
            "sys/user/max_user_namespaces",
            lambda v: v == 0,
            "user namespaces are disabled (user.max_user_namespaces = 0)",
            "sudo sysctl -w user.max_user_namespaces=15000 (add it to /etc/sysctl.d/ to keep it "
            "after a reboot)",
        ),
        (
            "sys/kernel/apparmor_restrict_unprivileged_userns",
            lambda v: v == 1,
            "AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns = 1)",
            "install your distribution's bubblewrap package (its AppArmor profile allows bwrap) "
            "or run `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
        ),
    )
    for name, bad, reason, fix in settings:
        try:
            value = int((proc / name).read_text().strip())
        except (OSError, ValueError):
            continue
        if bad(value):
            found.append((reason, fix))
    return found


# ---------------------------------------------------------------- the store


def check_database(paths: Paths) -> Check:
    """SQLite's own integrity check over the whole file (read-only)."""
    from krate.store.health import quick_check

    db = paths.db_path
    result = quick_check(db)
    if not result.exists:
        return Check("database", OK, f"no database yet at {db} (the first recording creates it)")
    if result.ok:
        return Check("database", OK, f"{db} passes SQLite's integrity check")
    more = f" (+{len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
    return Check(
        "database",
        FAIL,
        f"{db} is damaged: {result.problems[0]}{more}",
        f"move it aside with its head copy (`mv '{db}' '{db}.damaged'; mv "
        f"'{db.with_name('krate.head')}' '{db}.damaged.head'`: krate starts a fresh record) "
        "or restore a backup of both",
    )


def check_chain(paths: Paths, *, database_ok: bool) -> Check:
    """The event chain verifies (no edit, deletion, insertion, reordering or cut tail)."""
    if not paths.db_path.exists():
        return Check("event chain", OK, "no events yet")
    if not database_ok:
        return Check(
            "event chain",
            FAIL,
            "not checked: the database is damaged",
            "fix the database first (see above)",
        )
    from krate.store import events, open_store

    try:
        with open_store(paths, readonly=True) as store:
            result = events.verify(store)
    except KrateError as exc:
        detail, _, fix = str(exc).partition("; ")
        return Check("event chain", FAIL, detail, fix)
    if result.ok:
        return Check(
            "event chain",
            OK,
            f"{counted(result.events, 'event')}, chain intact, head {result.head[:16]}…",
        )
    return Check(
        "event chain",
        FAIL,
        f"chain broken at event {result.first_bad_seq}: {result.reason}; the record was "
        "changed outside krate",
        f"keep a copy for investigation (`cp '{paths.db_path}' ~/krate-evidence.db`), see "
        f"`krate audit show {result.first_bad_seq}`; `krate data delete` then starts a fresh "
        "record (restorable for 7 days)",
    )


# ---------------------------------------------------------------- files


def _walk(root: Path) -> Iterator[Path]:
    """`root` and everything under it, not following symlinks, at most MAX_WALK entries."""
    yield root
    count = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            count += 1
            if count > MAX_WALK:
                return
            yield Path(folder) / name


def check_permissions(paths: Paths, uid: int | None = None) -> Check:
    """Everything krate keeps is the user's own and closed to group and others (0700/0600)."""
    from krate.privacy.deletion import pending_area

    uid = os.getuid() if uid is None else uid
    roots = [paths.data_dir]
    if paths.config_dir != paths.data_dir:
        roots.append(paths.config_dir)
    roots.append(pending_area(paths))
    open_to_others: list[Path] = []
    foreign: list[Path] = []
    seen = 0
    for root in roots:
        if not root.exists():
            continue
        for path in _walk(root):
            try:
                st = path.lstat()
            except OSError:
                continue
            if path.is_symlink():
                continue
            seen += 1
            if st.st_uid != uid:
                foreign.append(path)
            elif st.st_mode & 0o077:
                open_to_others.append(path)
    if not seen:
        return Check("permissions", OK, "no data folder yet")
    if not open_to_others and not foreign:
        return Check(
            "permissions",
            OK,
            f"{counted(seen, 'folder or file', 'folders and files')}, all private "
            "(folders 0700, files 0600)",
        )
    problems, fixes = [], []
    if open_to_others:
        problems.append(
            f"{len(open_to_others)} readable by group or others: {_examples(open_to_others)}"
        )
        fixes.append("chmod -R go-rwx " + " ".join(f"'{r}'" for r in roots if r.exists()))
    if foreign:
        problems.append(f"{len(foreign)} not owned by you: {_examples(foreign)}")
        fixes.append('sudo chown -R "$(id -un)" ' + " ".join(f"'{r}'" for r in roots if r.exists()))
    return Check("permissions", FAIL, "; ".join(problems), " and ".join(fixes))


def _examples(found: list[Path]) -> str:
    shown = ", ".join(f"{p} ({oct(p.lstat().st_mode & 0o777)[2:]})" for p in found[:MAX_SHOWN])
    return shown + (", …" if len(found) > MAX_SHOWN else "")


def check_pending(paths: Paths, now: datetime) -> Check:
    """Deletions waiting out their grace period; any that should already be gone."""
    from krate.privacy.deletion import PURGING, list_pending, pending_area

    area = pending_area(paths)
    pending = list_pending(paths)
    stuck = (
        sorted(p.name for p in area.iterdir() if p.name.endswith(PURGING))
        if (area.is_dir())
        else []
    )
    overdue = [p for p in pending if now >= p.purge_after]
    if stuck or overdue:
        names = [*(s[: -len(PURGING)] for s in stuck), *(p.stamp for p in overdue)]
        return Check(
            "pending deletions",
            FAIL,
            f"{len(names)} deletion(s) past their grace period still on disk in {area}: "
            + ", ".join(names),
            "every krate command purges these, so the purge failed: check that you own "
            f"{area} and can write it (`ls -la '{area}'`), then run `krate info` to purge",
        )
    if pending:
        return Check(
            "pending deletions",
            OK,
            f"{len(pending)} deletion(s) restorable until "
            + ", ".join(p.purge_after.strftime("%Y-%m-%d %H:%M UTC") for p in pending)
            + " (`krate data restore` brings one back)",
        )
    return Check("pending deletions", OK, "none")


# ---------------------------------------------------------------- keychain


def check_keychain(paths: Paths, backend: str, *, write_test: bool = False) -> Check:
    """Which keyring backend krate uses and whether it answers (stores, when asked to test)."""
    from krate.privacy.keychain import entries_in
    from krate.registry.keychain import SERVICE, Credentials, open_keychain

    try:
        keychain = open_keychain(backend)
        label = keychain.label
        if write_test:
            account = f"{PROBE_ACCOUNT}-{secrets.token_hex(4)}"
            probe = Credentials("krate-doctor", secrets.token_hex(16))
            keychain.put(account, probe)
            try:
                back = keychain.get(account)
            finally:
                keychain.delete(account)
            if back != probe:
                raise KrateError(f"the {label} returned something else than was stored")
            how = "stored, read back and removed a test entry"
        else:
            keychain.get(PROBE_ACCOUNT)  # a read of an entry that does not exist: no prompt
            how = "answers (pass --keyring-write-test to store and remove a test entry)"
    except KrateError as exc:
        detail, _, fix = str(exc).partition("; ")
        needed = entries_in(paths.db_path)
        status = FAIL if write_test or needed else WARN
        why = (
            f"your record names {len(needed)} stored login(s)"
            if needed
            else "only `krate login` and `krate push` need it"
        )
        return Check(
            "keychain", status, f"{detail} ({why}; service {SERVICE!r})", fix or "see docs"
        )
    return Check("keychain", OK, f"{label} ({backend}) {how}")
