"""Policy decisions per second: the egress proxy asks `decide_net` for every connection.

Run: .venv/bin/python bench/bench_policy.py [--seconds 2]
Target (issue 3): a compiled policy answers >= 200,000 `net` decisions per second in one process.
Three mixes are timed: hosts the proxy sees again and again (the usual case), every host new
(no normalisation cache help), and a large allow list (500 patterns).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from krate.policy import Flags, effective_policy
from krate.policy.hosts import normalize_subject

REPEATED = [
    ("registry.npmjs.org", 443),
    ("objects.githubusercontent.com", 443),
    ("evil.example.com", 443),
    ("pypi.org", 22),
    ("a.b.c.d.e.f.example.net", 443),
    ("10.1.2.3", 443),
    ("[::1]", 5432),
    ("files.pythonhosted.org", 443),
]


def rate(policy, subjects, seconds: float) -> tuple[float, float]:
    """(decisions per wall second, per CPU second): CPU time shows the cost on a busy machine."""
    decide = policy.decide_net
    n = 0
    begin, cpu = time.perf_counter(), time.process_time()
    deadline = begin + seconds
    while time.perf_counter() < deadline:
        for host, port in subjects:
            decide(host, port)
        n += len(subjects)
    return n / (time.perf_counter() - begin), n / (time.process_time() - cpu)


def fresh_rate(policy, count: int) -> tuple[float, float]:
    subjects = [(f"h{i}.pkg{i % 97}.example.org", 443) for i in range(count)]
    normalize_subject.cache_clear()
    policy._memo.clear()
    decide = policy.decide_net
    begin, cpu = time.perf_counter(), time.process_time()
    for host, port in subjects:
        decide(host, port)
    return count / (time.perf_counter() - begin), count / (time.process_time() - cpu)


def show(label: str, rates: tuple[float, float]) -> None:
    print(f"{label:<30}{rates[0]:>12,.0f} /s   ({rates[1]:,.0f} per CPU second)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        common = dict(workspace=root, home=root, user_policy_path=root / "none.toml", trusted={})
        begin = time.perf_counter()
        policy = effective_policy(**common, flags=Flags())
        compile_ms = (time.perf_counter() - begin) * 1000
        many = tuple(f"host{i}.example.com" for i in range(250)) + tuple(
            f"*.zone{i}.example.org:*" for i in range(250)
        )
        big = effective_policy(**common, flags=Flags(allow_host=many))
        print(f"compile (default profile): {compile_ms:.1f} ms")
        show("decide_net, repeated hosts:", rate(policy, REPEATED, args.seconds))
        show("decide_net, 500-rule list:", rate(big, REPEATED, args.seconds))
        show("decide_net, every host new:", fresh_rate(policy, 200_000))
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print("target: >= 200,000 /s")


if __name__ == "__main__":
    main()
