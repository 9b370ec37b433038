"""Threads the egress proxy keeps for its next job, instead of one new thread per job.

The proxy serves every connection, and resolves every name, in a thread of its own
(blocking sockets, and a getaddrinfo that cannot be interrupted). Starting a thread
cost about 0.1 ms of CPU, and `Thread.start` then waits until the new thread runs: two
hand-overs of the interpreter lock on every connection's path. A thread that finished
its job here waits for the next one instead of ending.

Why not `concurrent.futures.ThreadPoolExecutor`: its import is several milliseconds of
the proxy's start-up, which a run's first connection waits for, and it queues a job
while every thread is busy, where the proxy needs a thread at once (a client stalled in
its request must not hold up the next); the callers bound the number of threads.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

Job = Callable[[], object]


KEEP = 64  # threads kept waiting at most; one finishing beyond that ends


class Workers:
    """Runs each job at once: in a thread that is waiting for work, or in a new one.

    At most `keep` threads wait: a burst of connections (up to the proxy's cap of open
    ones) must not hold as many threads, counted against the user's process limit, for
    the rest of the run."""

    def __init__(self, keep: int = KEEP) -> None:
        self.idle: list[tuple[threading.Lock, list]] = []  # (its wake-up lock, its job box)
        self.lock = threading.Lock()
        self.keep = keep

    def submit(self, job: Job, after: Job | None = None) -> None:
        """Run `job()`, then `after()` once the thread is counted idle again (a caller's
        bound is released only then, so no extra thread starts meanwhile).

        RuntimeError when no thread is waiting and none can be started."""
        with self.lock:
            waiting = self.idle.pop() if self.idle else None
        if waiting is None:
            threading.Thread(target=self.work, args=((job, after),), daemon=True).start()
            return
        wake, box = waiting
        box[0] = (job, after)
        wake.release()

    def work(self, task: tuple) -> None:
        wake, box = threading.Lock(), [task]
        wake.acquire()
        while True:
            job, after = box[0]
            box[0] = None
            try:
                job()
            except BaseException:  # as a thread's own would be reported; this one lives on
                sys.excepthook(*sys.exc_info())
            with self.lock:
                kept = len(self.idle) < self.keep
                if kept:
                    self.idle.append((wake, box))
            if after is not None:
                try:
                    after()
                except BaseException:
                    sys.excepthook(*sys.exc_info())
            if not kept:
                return
            wake.acquire()  # released by submit() with the next job in `box`
