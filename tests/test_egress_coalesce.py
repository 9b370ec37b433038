"""Repeated denials are coalesced per host and port, and counted right even after a crash.

Against a real SQLite store and a real journal file, as the recorder writes them.
"""

from __future__ import annotations

import json

from krate.egress import recorder
from krate.paths import Paths
from krate.store import egress as egress_store
from krate.store import open_store


def _line(n: int, host: str, port: int = 443, verdict: str = "deny") -> dict:
    return {
        "type": "decision", "n": n, "protocol": "connect", "host": host, "port": port,
        "verdict": verdict, "rule": "default: no rule allows it", "layer": "builtin:strict",
        "reason": "", "address": None, "bytes_up": 0, "bytes_down": 0, "duration_ms": 0.1,
        "started": f"2026-01-01T00:00:{n % 60:02d}.000000Z",
    }  # fmt: skip


def _journal(paths: Paths, run_id: str, lines: list[dict]) -> None:
    paths.egress_journals.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(x) + "\n" for x in lines)
    recorder.journal_path(paths, run_id).write_text(text)


def _hosts(paths: Paths, run_id: str) -> dict:
    with open_store(paths, readonly=True) as store:
        return {
            (h["host"], h["port"], h["verdict"]): h["connections"]
            for h in egress_store.host_summary(store, run_id)
        }


def test_a_killed_runs_repeated_denials_are_counted_at_the_next_start(krate_home):
    paths = Paths.from_env({"KRATE_HOME": str(krate_home)})
    lines = [_line(1, "a.example"), _line(2, "ok.example", verdict="allow")]
    lines += [_line(n, "a.example") for n in range(3, 53)] + [_line(53, "b.example", 80)]
    with open_store(paths) as store:  # what the killed krate had recorded: the first two
        egress_store.append_decisions(store, "r1", [recorder.event_data(x) for x in lines[:2]])
    _journal(paths, "r1", lines)
    assert recorder.recover(paths) == 51
    assert _hosts(paths, "r1") == {
        ("a.example", 443, "deny"): 51, ("ok.example", 443, "allow"): 1,
        ("b.example", 80, "deny"): 1,
    }  # fmt: skip
    with open_store(paths, readonly=True) as store:
        rows = [e for e in egress_store.recorded_state(store, "r1")[1]]
        count = store.conn.execute(
            "SELECT count(*) FROM events WHERE json_extract(data, '$.repeats') IS NOT NULL"
        ).fetchone()[0]
    assert count == 1 and len(rows) == 2
    # the journal is gone; a journal left after the counts were recorded adds nothing
    assert not recorder.journal_path(paths, "r1").exists()
    _journal(paths, "r1", lines)
    assert recorder.recover(paths) == 0
    assert _hosts(paths, "r1")[("a.example", 443, "deny")] == 51


def test_the_live_recorder_records_the_first_and_counts_the_rest(krate_home):
    paths = Paths.from_env({"KRATE_HOME": str(krate_home)})
    coalescer = recorder.Coalescer()
    lines = [_line(n, f"h{n % 3}.example") for n in range(1, 31)]
    taken = [x["n"] for x in lines if coalescer.take(x)]
    assert taken == [1, 2, 3]
    assert coalescer.take(lines[0])  # the same first line again (from the journal): recorded
    counted = coalescer.counted()
    assert sorted((c["host"], c["repeats"]) for c in counted) == [
        ("h0.example", 9), ("h1.example", 9), ("h2.example", 9)
    ]  # fmt: skip
    assert all(c["verdict"] == "deny" and c["n"] is None for c in counted)
    # distinct hosts past the cap are counted together
    many = recorder.Coalescer()
    flood = [_line(n, f"x{n}.example") for n in range(1, recorder.DENIED_KEYS_MAX + 51)]
    assert sum(many.take(x) for x in flood) == recorder.DENIED_KEYS_MAX + 1
    [further] = many.counted()
    assert further["host"] is None and further["repeats"] == 49
    assert further["subject"] == "(further denied hosts)"
    with open_store(paths) as store:
        egress_store.append_decisions(store, "r2", [recorder.event_data(flood[0]), further])
    assert _hosts(paths, "r2") == {("x1.example", 443, "deny"): 1, (None, None, "deny"): 49}
