"""The egress ledger: helpers' connection reports become `network.egress` events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from krate.netguard import ledger
from krate.paths import Paths
from krate.store import events, open_store

from .conftest import run_krate

HELPER = Path(__file__).parent / "fixtures" / "fake_helper.py"


def test_parse_accepts_host_and_port_only():
    line = ledger.report_line("GHCR.io", 443, at="2026-05-01T10:00:00.000000Z")
    assert ledger.parse(line) == ledger.Egress(
        "ghcr.io", 443, "connected", "2026-05-01T10:00:00.000000Z"
    )
    assert ledger.parse(b'{"type": "ready"}') is None
    unreadable = ledger.Egress(None, None, ledger.UNREADABLE, None)
    for bad in (
        b"not json",
        b"[1]",
        b'{"type": "egress", "host": "h.example/p?q=1", "port": 443, "outcome": "connected"}',
        b'{"type": "egress", "host": "user:pw@h.example", "port": 443, "outcome": "connected"}',
        b'{"type": "egress", "host": "h.example", "port": 70000, "outcome": "connected"}',
        b'{"type": "egress", "host": "h.example", "port": true, "outcome": "connected"}',
        b'{"type": "egress", "host": "h.example", "port": 443, "outcome": "maybe"}',
    ):
        assert ledger.parse(bad) == unreadable, bad
    assert ledger.parse(ledger.report_line("[::1]", 5000)).host == "[::1]"


def test_ledger_records_a_helpers_connections_with_the_command_that_asked(listener, krate_home):
    (host, port), accepted = listener
    paths = Paths(krate_home, krate_home)
    book = ledger.Ledger(
        lambda: open_store(paths), command="krate push", helper="registry-transport", run_id="R1"
    )
    others = []
    book.on_other = others.append
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(HELPER), host, str(port)], stdout=subprocess.PIPE
    )
    book.follow(proc.stdout)
    assert proc.wait(timeout=60) == 0
    recorded = book.finish()
    assert [(e.host, e.port, e.outcome) for e in recorded] == [
        (host, port, "connected"),
        ("evil.example", 443, "refused"),
        (None, None, ledger.UNREADABLE),
        (None, None, ledger.UNREADABLE),
    ]
    assert [o["type"] for o in others] == ["ready", "closed"]
    assert len(accepted) == 1
    with open_store(paths, readonly=True) as store:
        rows = events.query(store, kind_prefix="network.egress")
    assert [r.data["command"] for r in rows] == ["krate push"] * 4
    assert rows[0].run_id == "R1" and rows[0].data["helper"] == "registry-transport"
    assert rows[0].data["at"].endswith("Z")
    assert "SECRET" not in json.dumps([r.data for r in rows])


def test_a_locked_parent_records_what_its_unlocked_helper_did(listener, krate_home):
    """The shape push and run will use: spawn the helper, lock down, read its reports."""
    (host, port), accepted = listener
    parent = textwrap.dedent(
        f"""
        import socket, subprocess, sys
        from krate.netguard import ledger, lockdown
        from krate.paths import Paths
        from krate.store import open_store
        paths = Paths.from_env()
        helper = subprocess.Popen([sys.executable, "-I", "-S", {str(HELPER)!r}, {host!r},
                                   "{port}"], stdout=subprocess.PIPE)
        assert lockdown.apply()["applied"]
        book = ledger.Ledger(lambda: open_store(paths), command="krate push",
                             helper="registry-transport")
        book.follow(helper.stdout)
        helper.wait()
        print(len(book.finish()))
        try:
            socket.create_connection(({host!r}, {port}), timeout=3)
            print("parent connected")
        except PermissionError:
            print("parent refused")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", parent],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["4", "parent refused"]
    assert len(accepted) == 1  # the helper's one connection, not the parent's

    result = run_krate("audit", "network", "--json")
    summary = json.loads(result.stdout)
    assert summary["claim"] == (
        "3 outbound connections, all from `krate push` to 2 destinations; 0 from anything else"
    )
    (push,) = summary["egress"]["by_command"]
    assert push["declined_by_helper"] == 1
    assert {d["destination"] for d in push["destinations"]} == {
        f"{host}:{port}",
        "(unreadable report)",
    }


def test_claims(krate_home):
    paths = Paths(krate_home, krate_home)
    assert (
        run_krate("audit", "network").stdout.splitlines()[0]
        == "0 outbound connections by krate itself"
    )
    with open_store(paths) as store:
        for _ in range(3):
            events.append(
                store,
                "network.egress",
                ledger.Egress("ghcr.io", 443, "connected", None).event_data(
                    "krate push", "registry-transport"
                ),
            )
        # Workload traffic through the egress proxy: listed separately, not krate's own.
        events.append(
            store,
            "policy.decision",
            {"area": "network", "host": "registry.npmjs.org", "port": 443, "verdict": "allow"},
            run_id="W1",
        )
        events.append(
            store,
            "policy.decision",
            {"area": "network", "host": "evil.example", "port": 443, "verdict": "deny"},
            run_id="W1",
        )
        events.append(store, "policy.decision", {"area": "filesystem", "path": "/x"})
    text = run_krate("audit", "network").stdout.splitlines()
    assert text[0] == (
        "3 outbound connections, all from `krate push` to ghcr.io:443; 0 from anything else"
    )
    assert text[1].startswith("lockdown of this process: in force")
    assert "  krate push (3): ghcr.io:443 x3" in text
    assert "workload connections through the egress proxy (policy decisions): 2" in text
    assert "  evil.example:443 deny x1" in text
    with open_store(paths) as store:
        events.append(
            store,
            "network.egress",
            ledger.Egress("auth.example", 443, "connected", None).event_data(
                "krate login", "registry-transport"
            ),
        )
    summary = json.loads(run_krate("audit", "network", "--json").stdout)
    assert summary["claim"] == (
        "4 outbound connections, all from `krate push` (3), `krate login` (1); 0 from anything else"
    )
    assert summary["workload"]["decisions"] == 2
    assert summary["lockdown"]["enforced"] is True


def test_a_ledger_that_cannot_record_still_drains_the_helper_and_says_why(tmp_path):
    """A store that fails must not leave the helper blocked on a full pipe (push would hang)."""
    script = tmp_path / "chatty.py"
    script.write_text(
        "import sys\n"
        f"line = {ledger.report_line('ghcr.io', 443).decode()!r}\n"
        "for _ in range(5000):\n"
        "    sys.stdout.write(line)\n"
    )

    def no_store():
        raise OSError("the store is gone")

    book = ledger.Ledger(no_store, command="krate push", helper="registry-transport")
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(script)], stdout=subprocess.PIPE)
    book.follow(proc.stdout)
    try:
        assert proc.wait(timeout=30) == 0  # it could write everything
    finally:
        proc.kill()
    with pytest.raises(OSError, match="the store is gone"):
        book.finish()


def test_a_whole_report_without_its_newline_is_still_recorded(tmp_path, krate_home):
    """The helper's last report, cut before its newline (killed), counts like any other."""
    paths = Paths(krate_home, krate_home)
    first, last = ledger.report_line("a.example", 443), ledger.report_line("ghcr.io", 443)
    script = tmp_path / "cut.py"
    script.write_text(f"import os\nos.write(1, {first + last.rstrip()!r})\nos._exit(9)\n")
    book = ledger.Ledger(lambda: open_store(paths), command="krate push", helper="t")
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(script)], stdout=subprocess.PIPE)
    book.follow(proc.stdout)
    assert proc.wait(timeout=30) == 9
    assert [(e.host, e.outcome) for e in book.finish()] == [
        ("a.example", "connected"),
        ("ghcr.io", "connected"),
    ]
