"""What a run was refused, in a few lines for its end: hosts, why, and the flag that allows each.

A workload that is refused a connection often does not say so (pip falls back to
stale wheels, npm prints E403 about something else), so krate says it once, on
stderr, when the run ends: the hosts denied and how many times, the reason, the
exact `krate run` flag that would allow each (the `hint` the egress proxy recorded
with the decision, or the same rule applied to a decision recorded without one),
for a private-address denial the `krate policy allow --private` command that
allows it in every run, and where the details are. It stays a few lines with hundreds of denials.
Environment strips are counted on a line of their own.

Pure: it reads the run's recorded decisions (`policy.decision` data), never the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

MAX_HOSTS = 5  # hosts named one per line; the rest are counted
MAX_NAMES = 4  # stripped variable names shown
DETAILS = "krate runs show last"
PRIVATE_FLAG = "--allow-private-host"


def hint_of(decision: dict[str, Any]) -> str:
    """The flag that would allow this network denial; "" when no policy flag would (the
    proxy's own limits, a client without the run's credential, input that is no host)."""
    from krate.policy.hosts import allow_hint, normalize_subject

    if decision.get("hint"):
        return str(decision["hint"])
    if decision.get("layer") in ("proxy", "input"):
        return ""
    host, port = str(decision.get("host") or ""), int(decision.get("port") or 443)
    norm = normalize_subject(host)
    if "resolves to" in str(decision.get("reason") or "") and norm is not None and not norm[1]:
        return f"{PRIVATE_FLAG} {norm[0]}"
    return allow_hint(host, port)


def policy_fix(hint: str, host: Any, port: Any) -> str:
    """The command that fixes a private-address denial in the user policy for every run
    (`private_ok` and, when missing, `add`); "" for any other hint."""
    from krate.policy.hosts import host_text

    if not hint.startswith(PRIVATE_FLAG + " "):
        return ""
    return f"krate policy allow --private {host_text(str(host), int(port or 443))}"


def why_of(decision: dict[str, Any]) -> str:
    """The reason, short: what the address was, or which rule list it is missing from."""
    reason = str(decision.get("reason") or "").split("; to allow it:")[0]
    host = str(decision.get("host") or "")
    if "resolves to" in reason:
        return reason.removeprefix(host).strip()
    if reason and "is not allowed by the policy" not in reason:
        return reason
    return "not in network.allow"


def summary_lines(decisions: Iterable[dict[str, Any]], stripped: Sequence[str] = ()) -> list[str]:
    """The lines krate prints when the run ends; empty when nothing on the network was denied."""
    hosts: dict[tuple, dict[str, Any]] = {}
    further = 0
    for d in decisions:
        if d.get("verdict") != "deny" or d.get("area") != "network":
            continue
        count = int(d.get("repeats") or 1)
        if d.get("host") is None:  # denials past the recorder's host cap, counted together
            further += count
            continue
        key = (d.get("host"), d.get("port"))
        row = hosts.get(key)
        if row is None:
            row = hosts[key] = {"count": 0, "decision": d}
        row["count"] += count
    if not hosts and not further:
        return []
    total = sum(r["count"] for r in hosts.values()) + further
    lines = [f"krate: {_plural(total, 'connection')} refused:"]
    ranked = sorted(hosts.items(), key=lambda item: -item[1]["count"])
    for (host, port), row in ranked[:MAX_HOSTS]:
        d, times = row["decision"], f"{row['count']}x"
        hint = hint_of(d)
        allow = f"; allow with {hint}" if hint else ""
        lines.append(f"krate:   {_subject(host, port)} ({times}): {why_of(d)}{allow}")
    rest = len(ranked) - MAX_HOSTS
    if rest > 0 or further:
        more = sum(r["count"] for _, r in ranked[MAX_HOSTS:]) + further
        hosts_more = f"{rest} more host{'s' if rest != 1 else ''}" if rest > 0 else "more hosts"
        lines.append(f"krate:   and {hosts_more} ({_plural(more, 'connection')})")
    hints = [hint for _, r in ranked if (hint := hint_of(r["decision"]))]
    fixes = [
        fix for (h, p), r in ranked[:MAX_HOSTS] if (fix := policy_fix(hint_of(r["decision"]), h, p))
    ]
    lines += [f"krate:   or for every run: {fix}" for fix in dict.fromkeys(fixes)]
    if hints:
        lines += _policy_line(hints)
    if stripped:
        names = ", ".join(stripped[:MAX_NAMES]) + (", ..." if len(stripped) > MAX_NAMES else "")
        lines.append(
            f"krate: {_plural(len(stripped), 'secret-looking variable')} stripped ({names}); "
            "--env NAME passes one"
        )
    lines.append(f"krate: details: {DETAILS}")
    return lines


def _policy_line(hints: Iterable[str]) -> list[str]:
    """The same hints as lines of a policy file's `[network]` table (docs/policy.md)."""
    keys: dict[str, list[str]] = {"add": [], "private_ok": []}
    for hint in hints:
        flag, _, value = hint.partition(" ")
        key = "private_ok" if flag == PRIVATE_FLAG else "add"
        if value not in keys[key]:
            keys[key].append(value)
    parts = [
        f"{key} = [{', '.join(map(_quoted, values[:MAX_HOSTS]))}]"
        for key, values in keys.items()
        if values
    ]
    return [f"krate:   or in a policy file's [network] table: {'; '.join(parts)}"]


def _quoted(value: str) -> str:
    return '"' + value + '"'


def _subject(host: Any, port: Any) -> str:
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
