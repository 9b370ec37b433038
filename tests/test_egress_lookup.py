"""The egress proxy's name lookups: threads kept for reuse, still bounded as before.

Each connection used to start a thread for its getaddrinfo (bounded by the connect
timeout and the shutdown, since a lookup cannot be interrupted); starting one cost about
0.1 ms of CPU per connection. The lookup threads are now kept and reused. These tests
check the reuse and that every bound stayed: a slow resolver still times a connection
out, still holds at most MAX_LOOKUPS lookups at once, other names still resolve meanwhile,
and an IP address is never handed to a lookup thread (nothing to wait for).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from krate.egress import compile_rules, dial
from krate.egress.dial import Dialer, Refused

from .egress_support import policy


@pytest.fixture
def dialer(tmp_path):
    pol = policy(tmp_path, "a.example", "slow.example")
    rules = compile_rules(pol)
    return Dialer(rules, list(pol.net_default), 0.5)


@pytest.fixture
def resolver(monkeypatch):
    """getaddrinfo answering every name with 192.0.2.1, `slow.example` only once `go` is
    set; records the thread each call ran in (kept alive, so each stays distinct)."""
    seen: list[threading.Thread] = []
    go = threading.Event()
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        seen.append(threading.current_thread())
        if host == "slow.example":
            go.wait(10)
        if kwargs.get("flags"):
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port))]

    monkeypatch.setattr(dial.socket, "getaddrinfo", fake)
    yield seen, go
    go.set()


def test_lookups_reuse_one_thread(dialer, resolver):
    seen, _go = resolver
    for _ in range(20):
        assert dialer.lookup("a.example", 443)[0][4] == ("192.0.2.1", 443)
    assert len(seen) == 20
    assert len({id(t) for t in seen}) == 1  # one thread, started once
    assert seen[0] is not threading.current_thread()


def test_an_address_is_converted_without_a_lookup_thread(dialer, resolver):
    seen, _go = resolver
    infos = dialer.lookup("192.0.2.7", 80)
    assert {i[4][0] for i in infos} == {"192.0.2.7"}
    assert dialer.lookup("2001:db8::1", 80)[0][4][0] == "2001:db8::1"
    assert seen == [threading.current_thread()] * 2  # in the caller's own thread


def test_a_slow_resolver_still_times_out_and_others_still_resolve(dialer, resolver):
    seen, go = resolver
    start = time.monotonic()
    with pytest.raises(Refused, match="resolving slow.example timed out"):
        dialer.lookup("slow.example", 443)
    assert 0.4 < time.monotonic() - start < 3
    # The slow lookup still holds its thread: another name gets another one, at once.
    assert dialer.lookup("a.example", 443)[0][4][0] == "192.0.2.1"
    assert len({id(t) for t in seen}) == 2
    go.set()
    deadline = time.monotonic() + 5
    while len(dialer.workers.idle) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(dialer.workers.idle) == 2  # both kept, and the next lookups use them
    for _ in range(5):
        dialer.lookup("a.example", 443)
    assert len({id(t) for t in seen}) == 2


def test_stuck_lookups_stay_bounded(resolver):
    """With every slot held by a stuck lookup, a further one waits for a slot and times
    out: no thread is started past MAX_LOOKUPS."""
    dialer = Dialer([], ("default", "builtin"), 0.3)
    seen, go = resolver
    errors: list[str] = []

    def stuck() -> None:
        try:
            dialer.lookup("slow.example", 443)
        except Refused as exc:
            errors.append(exc.reason)

    dialer.lookups = threading.BoundedSemaphore(3)
    workers = [threading.Thread(target=stuck) for _ in range(5)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(5)
    assert errors == ["resolving slow.example timed out"] * 5
    assert len({id(t) for t in seen}) == 3  # two of the five never got a slot
    go.set()


def test_a_lookup_failure_is_a_refusal(dialer, monkeypatch):
    def fail(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(dial.socket, "getaddrinfo", fail)
    for _ in range(3):  # the thread survives a failure and answers the next one
        with pytest.raises(Refused, match="cannot resolve a.example"):
            dialer.lookup("a.example", 443)
    assert len(dialer.workers.idle) == 1
