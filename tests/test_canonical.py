"""The one canonical JSON encoder gives the very bytes the former copies gave (the chain
hashes them), on varied data: non-ASCII, floats, nesting, key order, escapes."""

from __future__ import annotations

import hashlib
import json

from krate import canonical

SAMPLES = [
    {},
    {"b": 1, "a": [3, 2, 1], "c": {"z": None, "y": True, "x": False}},
    {"path": "/home/zoë/项目", "emoji": "🦀", "rtl": "שלום", "nul": "a\x00b", "q": '"\\'},
    {"f": 0.1, "g": 1e300, "h": -0.0, "i": 1.5e-7, "j": 10**20, "k": 3.0},
    {"nested": [{"b": [1, {"d": 2, "c": 1}]}, []], "tab\tkey": "line\nbreak", "": ""},
    ["top", "level", 1, 2.5, None],
    "a string",
    {"\u00e9": 1, "e\u0301": 2, "E": 3, "e": 4},
    {"surrogate": "\udcff"},
]


def _old(obj) -> str:
    # The expression every former copy used (store/events.py, policy/decide.py,
    # provenance/statement.py, the docs' stand-alone checker).
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_same_text_as_the_former_copies() -> None:
    for obj in SAMPLES:
        assert canonical.dumps(obj) == _old(obj)
    for obj in SAMPLES[:-1]:
        assert canonical.encode(obj) == _old(obj).encode("utf-8")


def test_known_bytes_and_hash() -> None:
    text = canonical.dumps({"b": 0.1, "a": "zoë 🦀", "c": [1.0, -0.0, 1e21]})
    assert text == '{"a":"zoë 🦀","b":0.1,"c":[1.0,-0.0,1e+21]}'
    assert (
        hashlib.sha256(text.encode()).hexdigest()
        == hashlib.sha256(
            b'{"a":"zo\xc3\xab \xf0\x9f\xa6\x80","b":0.1,"c":[1.0,-0.0,1e+21]}'
        ).hexdigest()
    )


def test_event_chain_and_statement_use_it() -> None:
    from krate.provenance import statement
    from krate.store import events

    for obj in SAMPLES:
        if isinstance(obj, dict):
            assert events.encode_data(obj) == _old(obj)
    assert statement.encode({"x": "é", "a": 1}) == _old({"x": "é", "a": 1}).encode()
