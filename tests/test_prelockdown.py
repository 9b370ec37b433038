"""No third-party code runs before `krate run`/`build`/`login`/`push` lock down.

Attack: on a fresh store `krate run` migrated it with sqlite-utils (and its
plugins: pluggy, click, dateutil, sqlite-fts4) before its seccomp lockdown, and
build/login/push imported Typer and friends there; platformdirs too without
KRATE_HOME. Code planted in any of them connected out through ctypes, spawned a
child that connected, and forked a child that connected after the lockdown.

Each test plants such modules in an installed krate's site-packages (they attack
a loopback listener, then load the real module) and checks that every one of
them was only ever imported under the kernel's filter, and that nothing got out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import as_root, wait_for
from .plant_support import plant, purelib, report_file, reports

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp lockdown"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap"),
]
# Third-party modules the deferred commands load: the store's migrations (sqlite-utils and
# its plugins), the CLI framework, platformdirs.
THIRD_PARTY = ("sqlite_fts4", "pluggy", "dateutil", "click", "typer", "platformdirs")


@pytest.fixture
def hostile(installed, tmp_path, listener):
    (host, port), accepted = listener
    site = purelib(installed)
    report = report_file(tmp_path / "report")
    files = [plant(site, name, report, target=f"{host}:{port}") for name in THIRD_PARTY]
    yield installed, report, accepted
    for path in files:
        path.unlink()


def krate(venv, *args, home=None, env=None, **kw):
    full = dict(os.environ if env is None else env)
    if home is not None:
        full["KRATE_HOME"] = str(home)
    kw.setdefault("timeout", 120)
    return subprocess.run(
        [str(venv / "bin" / "krate"), *as_root(args)],
        env=full,
        capture_output=True,
        text=True,
        **kw,
    )


def settle(report, accepted) -> list[dict]:
    """The reports, once every planted import's forked child has tried again (after 1.5 s)."""

    def all_late_in() -> list[dict]:
        seen = reports(report)
        imports = sum(1 for s in seen if "seccomp" in s)
        return seen if imports and sum(1 for s in seen if "late" in s) >= imports else []

    return wait_for(all_late_in, 30, "the planted modules' late children to report")


def assert_only_ever_locked(seen: list[dict], accepted) -> None:
    imports = [s for s in seen if "seccomp" in s]
    assert all(s["seccomp"] == 2 for s in imports), [s for s in imports if s["seccomp"] != 2]
    assert not [s for s in imports if "connected" in (s.get("ctypes"), s.get("child"))]
    assert not [s for s in seen if s.get("late") == "connected"]
    assert accepted == [], "planted code reached the listener"


@pytest.mark.parametrize("krate_home_set", [True, False], ids=["KRATE_HOME", "platformdirs"])
def test_run_on_a_fresh_store_loads_no_third_party_code_before_its_lockdown(
    hostile, tmp_path, krate_home_set
):
    venv, report, accepted = hostile
    ws = tmp_path / "ws"
    ws.mkdir()
    home = tmp_path / "user-home"
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME="", XDG_CONFIG_HOME="")
    env.pop("KRATE_HOME", None)
    store = tmp_path / "krate-home" if krate_home_set else None
    done = krate(venv, "run", "--no-network", "--", "true", home=store, env=env, cwd=ws)
    assert done.returncode == 0, done.stderr
    seen = settle(report, accepted)
    assert {s["module"] for s in seen} >= {"sqlite_fts4", "pluggy"}  # the migration ran
    assert_only_ever_locked(seen, accepted)
    db = (store or home / ".local" / "share" / "krate") / "krate.db"
    listed = krate(venv, "runs", "list", "--json", home=store, env=env)
    assert db.exists() and '"status": "finished"' in listed.stdout


def test_build_and_an_unusual_run_line_load_no_third_party_code_before_their_lockdown(
    hostile, tmp_path
):
    venv, report, accepted = hostile
    ws, store = tmp_path / "ws", tmp_path / "krate-home"
    ws.mkdir()
    done = krate(venv, "build", "-o", "out", "--", "touch", "out", home=store, cwd=ws)
    assert done.returncode == 0, done.stderr
    # Forms that only Typer used to parse: `--opt=value`, no `--`.
    done = krate(venv, "run", "--policy=strict", "-v", "true", home=store, cwd=ws)
    assert done.returncode == 0, done.stderr
    seen = settle(report, accepted)
    assert {s["module"] for s in seen} >= {"sqlite_fts4"}
    assert_only_ever_locked(seen, accepted)


def test_a_line_the_fast_parser_refuses_is_explained_after_the_lockdown(hostile, tmp_path):
    venv, report, accepted = hostile
    done = krate(venv, "run", "--bogus", "--", "true", home=tmp_path / "krate-home")
    assert done.returncode == 2 and "No such option: --bogus" in done.stderr
    seen = settle(report, accepted)
    assert "typer" in {s["module"] for s in seen}  # Typer explained it...
    assert_only_ever_locked(seen, accepted)  # ...locked


def test_login_and_push_start_their_transport_then_lock_down_before_typer(hostile, tmp_path):
    venv, report, accepted = hostile
    store = tmp_path / "krate-home"
    done = krate(venv, "login", "127.0.0.1:9", "-u", "me", "--password-stdin",
                 home=store, input="pw\n")  # fmt: skip
    assert done.returncode == 1  # nothing listens there (or no keychain): either way, refused
    done = krate(venv, "push", "nothing", "127.0.0.1:9/me/app:1", home=store)
    assert done.returncode == 1 and "no artifact 'nothing'" in done.stderr
    seen = settle(report, accepted)
    assert "typer" in {s["module"] for s in seen}
    assert_only_ever_locked(seen, accepted)


def test_run_purges_expired_deleted_data_after_its_lockdown(krate_home, tmp_path):
    """The purge may load keyring: run/build settle it once locked down, not before."""
    from datetime import UTC, datetime, timedelta

    from krate.privacy import deletion

    from .conftest import run_krate

    area = krate_home.with_name(krate_home.name + ".pending-deletion")
    assert run_krate("audit", "note", "before").returncode == 0
    assert run_krate("data", "delete", "--yes").returncode == 0
    (entry,) = area.iterdir()
    entry.rename(entry.with_name(deletion.stamp_of(datetime.now(UTC) - timedelta(days=8))))
    done = run_krate(*as_root(["run", "--no-network"]), "--", "true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not area.exists()
    listed = run_krate("runs", "list", "--json")
    assert '"status": "finished"' in listed.stdout  # the run's own record stays


def test_a_run_reaching_typer_after_the_lockdown_is_refused_not_run_locked(tmp_path):
    """Safety net: the sandbox must never start from an already locked krate (no run)."""
    code = (
        "from krate.cli.main import _protect\n"
        "_protect(['info'])  # locked at entry, as for a line the fast parser left to Typer\n"
        "from krate.cli.app import build\n"
        "build('run')(args=['run', '--', 'touch', 'ran'], prog_name='krate',\n"
        "             standalone_mode=False)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert "could not read this command line before locking itself out" in done.stderr
    assert done.returncode != 0 and not (tmp_path / "ran").exists()


def test_prove_starts_its_real_runs_then_locks_down_before_any_third_party_code(hostile, tmp_path):
    """`audit network --prove` starts its real run and build before its own lockdown (so their
    sandboxes are not born inside it): the prove process itself must still load no planted
    module unlocked, and its real runs must have run their workload."""
    venv, report, accepted = hostile
    done = krate(venv, "audit", "network", "--prove", "--json", home=tmp_path / "krate-home",
                 timeout=300)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    layers = json.loads(done.stdout)["layers"]
    startup = layers["startup"]
    assert "real_runs_started" not in startup, startup["real_runs_started"]  # started early
    if "strace" in (layers["os"].get("observer") or ""):
        assert all(r["workload"]["ran"] for r in startup["real_runs"].values()), startup
    seen = settle(report, accepted)
    assert "typer" in {s["module"] for s in seen}  # the prove process loaded it...
    assert_only_ever_locked(seen, accepted)  # ...and every planted module, only locked
