"""SQL for the egress proxy's `policy.decision` events: batched appends and per-run summaries.

Network decisions are ordinary chain events (kind `policy.decision`, data
`area: "network"`); this module only appends them in batches and reads them
back. An event with `repeats: K` stands for K more denials of the same host
and port (egress/recorder.py coalesces them). It must never store anything
beyond the metadata the proxy reports.
"""

from __future__ import annotations

from collections.abc import Iterable

from krate.store.connection import translate_errors

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

    from krate.store.connection import Store

KIND = "policy.decision"
AREA = "network"


def append_decisions(store: Store, run_id: str | None, rows: Iterable[dict[str, Any]]) -> int:
    """Append one event per row in ONE transaction (one lock, one commit per batch)."""
    n = 0
    with store.write() as writer:
        for row in rows:
            writer.append(KIND, row, run_id)
            n += 1
    return n


def recorded_numbers(store: Store, run_id: str) -> set[int]:
    """Connection numbers (the proxy's `n`) already recorded for this run."""
    with translate_errors(store.path):
        rows = store.conn.execute(
            "SELECT json_extract(data, '$.n') FROM events "
            "WHERE run_id = ? AND kind = ? AND json_extract(data, '$.area') = ?",
            (run_id, KIND, AREA),
        ).fetchall()
    return {row[0] for row in rows if row[0] is not None}


def recorded_state(store: Store, run_id: str) -> tuple[set[int], dict[tuple, Any], bool]:
    """For a killed run's journal: the `n` recorded, the first denial of each host and port,
    and whether the counts of repeated denials were recorded (the run ended normally)."""
    with translate_errors(store.path):
        rows = store.conn.execute(
            "SELECT json_extract(data, '$.n'), json_extract(data, '$.host'), "
            "json_extract(data, '$.port'), json_extract(data, '$.verdict'), "
            "json_extract(data, '$.repeats') FROM events "
            "WHERE run_id = ? AND kind = ? AND json_extract(data, '$.area') = ? ORDER BY seq",
            (run_id, KIND, AREA),
        ).fetchall()
    numbers = {n for n, *_ in rows if n is not None}
    firsts: dict[tuple, Any] = {}
    for n, host, port, verdict, repeats in rows:
        if verdict != "allow" and repeats is None:
            firsts.setdefault((host, port), n)
    return numbers, firsts, any(row[4] is not None for row in rows)


def host_summary(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Hosts a run contacted: one row per host, port and verdict, with counts and bytes."""
    with translate_errors(store.path):
        rows = store.conn.execute(
            "SELECT json_extract(data, '$.host') AS host, json_extract(data, '$.port') AS port, "
            "json_extract(data, '$.verdict') AS verdict, "
            "sum(coalesce(json_extract(data, '$.repeats'), 1)), "
            "sum(json_extract(data, '$.bytes_up')), sum(json_extract(data, '$.bytes_down')), "
            "min(json_extract(data, '$.rule')) "
            "FROM events WHERE run_id = ? AND kind = ? AND json_extract(data, '$.area') = ? "
            "GROUP BY host, port, verdict ORDER BY min(seq)",
            (run_id, KIND, AREA),
        ).fetchall()
    return [
        {
            "host": host,
            "port": port,
            "verdict": verdict,
            "connections": count,
            "bytes_up": up or 0,
            "bytes_down": down or 0,
            "rule": rule,
        }
        for host, port, verdict, count, up, down, rule in rows
    ]
