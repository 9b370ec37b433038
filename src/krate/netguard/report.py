"""What `krate audit network` says: krate's own egress, refused attempts, workload traffic.

Reads events only (kinds `network.egress`, `guard.violation`, `policy.decision`)
and states the claim in one plain sentence first. Never writes, never touches
the network.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from krate.netguard import guard, ledger


def summarize(store: Any, lockdown_state: dict[str, Any]) -> dict[str, Any]:
    from krate.store import events

    egress = events.query(store, kind_prefix=ledger.EVENT_KIND)
    violations = events.query(store, kind_prefix=guard.EVENT_KIND)
    decisions = [
        e
        for e in events.query(store, kind_prefix="policy.decision")
        if e.data.get("host") is not None or e.data.get("area") == "network"
    ]

    by_command: dict[str, list] = defaultdict(list)
    for event in egress:
        by_command[event.data.get("command") or "(unknown command)"].append(event)
    commands = []
    for command, rows in by_command.items():
        # "refused": the helper declined a destination it was not started for; nothing left.
        out = [e for e in rows if e.data.get("outcome") != "refused"]
        dest = Counter(_dest(e.data) for e in out)
        outcomes = Counter(e.data.get("outcome") or "connected" for e in rows)
        commands.append(
            {
                "command": command,
                "connections": len(out),
                "declined_by_helper": len(rows) - len(out),
                "outcomes": dict(outcomes),
                "destinations": [
                    {"destination": d, "connections": n} for d, n in dest.most_common()
                ],
                "first": rows[0].ts,
                "last": rows[-1].ts,
            }
        )
    commands.sort(key=lambda c: -c["connections"])

    workload: Counter = Counter()
    for e in decisions:  # a count event (`repeats`) stands for that many denials
        workload[(_dest(e.data), e.data.get("verdict") or e.data.get("decision"))] += (
            e.data.get("repeats") or 1
        )
    return {
        "claim": claim(commands, len(violations)),
        "egress": {
            "connections": sum(c["connections"] for c in commands),
            "declined_by_helper": sum(c["declined_by_helper"] for c in commands),
            "by_command": commands,
        },
        "guard": {
            "refused_attempts": len(violations),
            "attempts": [
                {
                    "seq": e.seq,
                    "ts": e.ts,
                    "command": e.data.get("command"),
                    "event": e.data.get("event"),
                    "target": e.data.get("target"),
                    "where": f"{e.data.get('file')}:{e.data.get('line')}",
                }
                for e in violations
            ],
        },
        "workload": {
            "decisions": sum(workload.values()),
            "by_destination": [
                {"destination": d, "verdict": v, "connections": n}
                for (d, v), n in workload.most_common()
            ],
        },
        "lockdown": lockdown_state,
    }


def _dest(data: dict[str, Any]) -> str:
    host, port = data.get("host"), data.get("port")
    if host is None:
        return data.get("subject") if data.get("repeats") else "(unreadable report)"
    return f"{host}:{port}" if port is not None else str(host)


def claim(commands: list[dict[str, Any]], refused: int) -> str:
    """The first line: how many outbound connections krate itself made, and from where."""
    commands = [c for c in commands if c["connections"]]
    total = sum(c["connections"] for c in commands)
    if total == 0:
        text = "0 outbound connections by krate itself"
    else:
        plural = "s" if total != 1 else ""
        if len(commands) == 1:
            only = commands[0]
            dests = [d["destination"] for d in only["destinations"]]
            where = dests[0] if len(dests) == 1 else f"{len(dests)} destinations"
            text = f"{total} outbound connection{plural}, all from `{only['command']}` to {where}"
        else:
            parts = ", ".join(f"`{c['command']}` ({c['connections']})" for c in commands)
            text = f"{total} outbound connection{plural}, all from {parts}"
        text += "; 0 from anything else"
    if refused:
        text += f"; {refused} attempt{'s' if refused != 1 else ''} refused by the guard"
    return text


def lines(summary: dict[str, Any]) -> list[str]:
    """The human rendering: the claim first, then the lockdown, then the detail."""
    from krate.netguard.lockdown import describe

    out = [summary["claim"], f"lockdown of this process: {describe(summary['lockdown'])}", ""]
    out.append("krate's own connections, by the command that asked:")
    if not summary["egress"]["by_command"]:
        out.append("  none")
    for command in summary["egress"]["by_command"]:
        dests = ", ".join(
            f"{d['destination']} x{d['connections']}" for d in command["destinations"]
        )
        declined = command["declined_by_helper"]
        extra = f"; {declined} declined by the helper" if declined else ""
        out.append(f"  {command['command']} ({command['connections']}): {dests or '-'}{extra}")
    attempts = summary["guard"]["attempts"]
    out.append(f"refused attempts by code inside krate's process: {len(attempts)}")
    for item in attempts[-10:]:
        target = f" to {item['target']}" if item["target"] else ""
        out.append(
            f"  #{item['seq']} {item['command']}: {item['event']}{target} at {item['where']}"
        )
    workload = summary["workload"]
    out.append(
        f"workload connections through the egress proxy (policy decisions): {workload['decisions']}"
    )
    for row in workload["by_destination"][:20]:
        out.append(f"  {row['destination']} {row['verdict']} x{row['connections']}")
    return out
