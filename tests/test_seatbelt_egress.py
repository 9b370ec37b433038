"""On macOS the workload reaches the policy's loopback ports directly: the profile must allow them.

A real egress session on a loopback port (as `for_run` starts it for the Seatbelt
backend) wires a real spec; the profile built from it is asked through the SBPL
evaluator (tests/sbpl.py). It does not cover a Mac: that Seatbelt's
`(remote ip "localhost:N")` matches as the evaluator says (sandbox-runtime's
reading: 127.0.0.1 and ::1 only), nor that a direct connection is recorded (it is
not: docs/policy.md states the limit).
"""

from __future__ import annotations

from krate.egress import start_for_run
from krate.paths import Paths
from krate.policy import Flags
from krate.sandbox import seatbelt

from .egress_support import policy
from .sbpl import decide
from .seatbelt_support import CACHE, WS
from .seatbelt_support import spec_for as seatbelt_spec


def test_a_policy_allowing_a_loopback_port_lets_the_profile_reach_it_and_no_other(
    tmp_path, krate_home
):
    paths = Paths.from_env({"KRATE_HOME": str(krate_home)})
    session = start_for_run(
        policy(tmp_path, "127.0.0.1:5432", "example.com:443"), "lo", paths, network="loopback"
    )
    assert session is not None
    try:
        spec, _ = seatbelt_spec(tmp_path, Flags(), workspace=WS)
        wired = session.apply(spec)
        assert wired.loopback_ports == (5432,)
        prof = seatbelt.profile(wired, user_cache=CACHE)
        assert decide(prof, "network-outbound", "127.0.0.1:5432") == "allow"
        assert decide(prof, "network-outbound", f"127.0.0.1:{session.tcp_port}") == "allow"
        for address in ("127.0.0.1:5433", "127.0.0.1:22", "127.0.0.1:3128", "1.1.1.1:5432"):
            assert decide(prof, "network-outbound", address) == "deny", address
    finally:
        session.close()
