"""The egress proxy's kept threads (egress/workers.py): each connection, and each name
lookup, used to start a thread of its own; now a finished thread waits for the next job.

These check that sequential jobs reuse one thread, that jobs at once each get a thread
of their own at once (a stalled client must not hold up the next), that the proxy's
counts still end at zero, and that a job which fails in an unexpected way costs neither
its thread nor the next job: a lookup thread that died while listed as waiting would
have left every later lookup of the run waiting for its timeout.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from krate.egress import compile_rules, dial
from krate.egress.dial import Dialer, Refused
from krate.egress.handler import Proxy
from krate.egress.wire import Config
from krate.egress.workers import Workers

from .egress_support import policy


def test_sequential_jobs_reuse_one_thread_and_simultaneous_ones_do_not_wait():
    workers = Workers()
    seen: list[int] = []
    for _ in range(10):
        done = threading.Event()
        workers.submit(lambda: seen.append(threading.get_ident()), done.set)
        assert done.wait(5)
    assert len(set(seen)) == 1 and seen[0] != threading.get_ident()

    release = threading.Event()
    started = threading.Barrier(4, timeout=5)  # three jobs and this thread, all at once

    def stall() -> None:
        started.wait()
        release.wait(5)

    for _ in range(3):
        workers.submit(stall)
    started.wait()  # would time out (BrokenBarrierError) if a job waited for another
    release.set()


def test_a_failing_job_keeps_its_thread(capsys):
    workers = Workers()
    seen: list[int] = []
    done = threading.Event()

    def fail() -> None:
        seen.append(threading.get_ident())
        raise RuntimeError("a bug in a job")

    workers.submit(fail, done.set)
    assert done.wait(5)
    done.clear()
    workers.submit(lambda: seen.append(threading.get_ident()), done.set)
    assert done.wait(5)
    assert len(seen) == 2 and seen[0] == seen[1]  # the same thread answered the next job
    assert "a bug in a job" in capsys.readouterr().err  # reported, as a thread's would be


def test_a_lookup_that_raises_something_else_is_refused_and_the_next_is_answered(
    tmp_path, monkeypatch
):
    pol = policy(tmp_path, "a.example")
    dialer = Dialer(compile_rules(pol), list(pol.net_default), 0.5)
    calls: list[str] = []

    def resolver(host, port, *args, **kwargs):
        calls.append(host)
        if len(calls) == 1:
            raise UnicodeError("label too long")  # not an OSError
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port))]

    monkeypatch.setattr(dial.socket, "getaddrinfo", resolver)
    with pytest.raises(Refused, match="cannot resolve a.example"):
        dialer.lookup("a.example", 443)
    # the thread that failed was listed as waiting: it must still be there to answer
    assert dialer.lookup("a.example", 443)[0][4] == ("192.0.2.1", 443)
    assert len(dialer.workers.idle) == 1


def test_the_proxy_serves_connection_after_connection_in_one_thread(tmp_path):
    pol = policy(tmp_path, "a.example")
    config = Config(compile_rules(pol), "tcp:127.0.0.1:0")
    proxy = Proxy(config, Dialer(config.rules, list(pol.net_default), 0.5), lambda _l: None)
    seen: list[int] = []
    for _ in range(5):
        a, b = socket.socketpair()
        proxy.start(lambda conn, _f: (seen.append(threading.get_ident()), conn.close()), a)
        assert proxy.wait_idle(5)  # the count went back to zero
        b.close()
    assert len(seen) == 5 and len(set(seen)) == 1
    assert proxy.threads == 0


def test_a_burst_leaves_only_the_kept_threads_behind():
    """100 jobs at once: 100 threads while they run, then only `keep` of them wait; the
    others end, and the kept ones still take the next jobs."""
    workers = Workers(keep=4)
    release = threading.Event()
    finished = threading.Semaphore(0)
    before = threading.active_count()
    for _ in range(100):
        workers.submit(lambda: release.wait(5), finished.release)
    assert threading.active_count() >= before + 100
    release.set()
    for _ in range(100):
        assert finished.acquire(timeout=5)
    deadline = time.monotonic() + 5
    while threading.active_count() > before + 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before + 4
    assert len(workers.idle) == 4
    done = threading.Event()
    workers.submit(lambda: None, done.set)
    assert done.wait(5) and threading.active_count() == before + 4
