"""Parsing `--since`/`--until` values: a duration back from now, or a date/time.

Naive dates and times are the user's local time (what they see on their clock);
everything stored is UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from krate.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
ACCEPTED = (
    "a duration such as 30s, 15m, 1h, 2d, 1w, "
    "or a date/time such as 2026-11-01 or 2026-11-01T14:30:00Z"
)


def parse_duration(value: str) -> timedelta:
    match = _DURATION.match(value)
    if not match:
        raise ValueError(value)
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_moment(value: str, now: datetime, *, option: str = "--since") -> datetime:
    """A point in time (UTC) from a duration ago or an ISO 8601 date/time."""
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"invalid {option} value {value!r}: use {ACCEPTED}") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as on the user's clock
    return moment.astimezone(UTC)
