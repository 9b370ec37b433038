"""Sortable ids and the one resolver `runs show` and `builds show` share (krate/ids.py)."""

from __future__ import annotations

import os

import pytest

from krate import ids
from krate.errors import NotFound, UsageError
from krate.provenance.build import new_build_id
from krate.runs import new_run_id

from .build_support import facts, record_build

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _old(ms: int, rand: int) -> str:
    # The formula runs.new_run_id and provenance.build.new_build_id each carried.
    head = "".join(_ALPHABET[(ms >> (5 * i)) & 31] for i in range(9, -1, -1))
    return head + "".join(_ALPHABET[(rand >> (5 * i)) & 31] for i in range(5, -1, -1))


@pytest.mark.parametrize(
    ("ms", "rand"), [(0, 0), (1_700_000_000_000, 2**30 - 1), (2**50 - 1, 12345), (1, 2**29)]
)
def test_same_ids_as_the_former_copies(ms, rand):
    assert ids.new_id(ms, rand) == _old(ms, rand) == new_run_id(ms, rand)


def test_build_and_run_ids_have_one_shape():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    build = new_build_id(now)
    assert build[:10] == _old(int(now.timestamp() * 1000), 0)[:10]
    assert len(build) == len(new_run_id()) == 16 and set(build) <= set(_ALPHABET)


class _Row:
    def __init__(self, id_: str) -> None:
        self.id = id_


def _resolve(ref: str, rows: list[str]):
    return ids.resolve(
        ref,
        "thing",
        last=lambda: _Row(rows[-1]) if rows else None,
        exact=lambda i: _Row(i) if i in rows else None,
        prefixed=lambda p: [_Row(r) for r in sorted(rows) if r.startswith(p)][:11],
        none_yet="no things yet",
        listing="krate things list",
    )


def test_resolver_id_prefix_last_and_errors():
    rows = ["01abc", "01abd", "02xyz"]
    assert _resolve("last", rows).id == "02xyz"
    assert _resolve(" 01ABC ", rows).id == "01abc"
    assert _resolve("02", rows).id == "02xyz"
    with pytest.raises(UsageError, match=r"thing id prefix '01ab' is ambiguous \(01abc, 01abd\)"):
        _resolve("01ab", rows)
    with pytest.raises(NotFound, match=r"no thing '09'; see `krate things list`"):
        _resolve("09", rows)
    with pytest.raises(NotFound, match="no things yet"):
        _resolve("last", [])
    with pytest.raises(NotFound):
        _resolve("", rows)


def test_builds_show_uses_the_same_wording_as_runs_show(cli, tmp_path):
    assert cli("runs", "show", "zz").err.strip() == "krate: no run 'zz'; see `krate runs list`"
    a = record_build(tmp_path / "ws", {"dist/a": b"a"}, run=facts())
    b = record_build(tmp_path / "ws", run=facts())
    common = os.path.commonprefix([a.build.id, b.build.id])
    result = cli("builds", "show", common)
    assert result.code == 2
    assert f"build id prefix {common!r} is ambiguous" in result.err
    assert a.build.id in result.err and b.build.id in result.err
    missing = cli("builds", "show", "zz")
    assert missing.code == 1
    assert missing.err.strip() == "krate: no build 'zz'; see `krate builds list`"
