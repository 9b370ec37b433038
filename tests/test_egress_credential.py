"""The loopback listener's per-run credential: another local process cannot use a run's proxy.

On macOS the proxy listens on a 127.0.0.1 port that every local process can
reach. Each run's proxy URLs carry a secret (`http://krate:SECRET@127.0.0.1:PORT`);
without it a client is refused (407, or SOCKS5 method/credential refusal) and the
refusal is recorded in the run as another process's attempt. Real proxy process,
real curl and urllib, real store; the run-path test goes through `runs.execute`
with the Seatbelt backend and a stand-in sandbox-exec (as
test_sandbox_seatbelt_launcher.py does), since Seatbelt itself needs a Mac.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from krate import runs
from krate.cli.policy_load import flags_from, load_effective
from krate.egress import start_for_run
from krate.paths import Paths
from krate.sandbox import backend
from krate.store import events, open_store

from .egress_support import Server, all_event_text, decisions, policy
from .test_sandbox_seatbelt_launcher import STAND_IN

PROXY_RULE = ("proxy credential", "proxy")


@pytest.fixture
def origin():
    server = Server()
    yield server
    server.close()


@pytest.fixture
def paths(krate_home) -> Paths:
    return Paths.from_env({"KRATE_HOME": str(krate_home)})


def curl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip


def urllib_status(proxy: str, url: str) -> tuple[int, str]:
    """(status, Proxy-Authenticate) of `url` fetched by urllib through `proxy`."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    try:
        with opener.open(url, timeout=20) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Proxy-Authenticate", "")


def refused_count(rows: list[dict]) -> int:
    """Refusals for want of the credential, coalesced repeats included."""
    return sum(r.get("repeats") or 1 for r in rows if (r["rule"], r["layer"]) == PROXY_RULE)


def store_bytes(home: Path) -> bytes:
    """Every file krate keeps: the database (and its WAL), journals, run folders."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def test_only_clients_with_this_runs_credential_are_served(tmp_path, paths, origin):
    port = origin.port
    url = f"http://127.0.0.1:{port}/x"
    hello = f"hello from {port}\n"
    session = start_for_run(policy(tmp_path, f"127.0.0.1:{port}"), "r1", paths, network="loopback")
    assert session is not None and session.secret and len(session.secret) >= 40
    bare = f"http://127.0.0.1:{session.tcp_port}"
    wrong = f"http://krate:not-{session.secret[:8]}@127.0.0.1:{session.tcp_port}"
    try:
        # The proxy's own process never shows it: not in its argv or environment.
        proc = Path(f"/proc/{session.process.pid}")
        for name in ("cmdline", "environ"):
            assert session.secret.encode() not in (proc / name).read_bytes()
        refused = 0
        for proxy in (bare, wrong):
            assert curl("-x", proxy, "-w", "%{http_code}", url).stdout.endswith("407")
            tunnel = curl("-p", "-x", proxy, url)
            assert tunnel.returncode == 56 and "response 407" in tunnel.stderr
            assert urllib_status(proxy, url) == (407, 'Basic realm="krate"')
            socks = proxy.replace("http://", "socks5h://")
            assert curl("-x", socks, url).returncode == 97  # curl: the SOCKS proxy refused
            refused += 4
        assert origin.heads == []  # nothing reached the origin

        # The workload's own URLs, as apply() gives them: explicit, and from the environment.
        good = session.proxy_url()
        assert good == f"http://krate:{session.secret}@127.0.0.1:{session.tcp_port}"
        assert curl("-x", good, url).stdout == hello
        assert curl("-p", "-x", good, url).stdout == hello
        assert curl("-x", session.proxy_url("socks5h"), url).stdout == hello
        assert urllib_status(good, url) == (200, "")
        env = {"PATH": os.defpath, **session.env()}
        assert curl(url, env=env).stdout == hello  # curl reads http_proxy
        fetch = f"import urllib.request as u; print(u.urlopen({url!r}).read().decode(), end='')"
        python = [sys.executable, "-I", "-c", fetch]
        fetched = subprocess.run(python, env=env, capture_output=True, text=True, timeout=30)
        assert fetched.stdout == hello, fetched.stderr
    finally:
        session.close()
    # The origin never saw the proxy credential: stripped from the plain-HTTP requests.
    assert len(origin.heads) == 6
    for head in origin.heads:
        assert "proxy-authorization" not in head.lower() and session.secret not in head
    rows = decisions(paths, "r1")
    assert refused_count(rows) == refused
    for row in rows:
        if (row["rule"], row["layer"]) == PROXY_RULE:
            assert row["verdict"] == "deny"
            assert row["reason"] == "client did not give this run's proxy credential"
    assert sum(r["verdict"] == "allow" for r in rows) == 6
    # Never recorded: not the secret, not the header.
    text = all_event_text(paths)
    assert session.secret not in text and "Proxy-Authorization" not in text
    assert session.secret.encode() not in store_bytes(paths.data_dir)


def test_another_process_knowing_the_port_but_not_the_secret_is_refused(tmp_path, paths, origin):
    """Run B's workload (another process, with B's own credential) tries run A's port."""
    port = origin.port
    allow = policy(tmp_path, f"127.0.0.1:{port}")
    run_a = start_for_run(allow, "run-a", paths, network="loopback")
    run_b = start_for_run(allow, "run-b", paths, network="loopback")
    assert run_a.secret != run_b.secret
    foreign = {name: value.replace(f":{run_b.tcp_port}", f":{run_a.tcp_port}")
               for name, value in run_b.env().items()}  # fmt: skip
    script = (
        "import os, urllib.request as u, urllib.error as e\n"
        f"try: u.urlopen('http://127.0.0.1:{port}/')\n"
        "except e.HTTPError as x: print(x.code)\n"
    )
    try:
        other = subprocess.run(
            [sys.executable, "-I", "-c", script],
            env={"PATH": os.defpath, **foreign}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert other.stdout == "407\n", other.stderr
        no_secret = curl("-x", f"socks5h://127.0.0.1:{run_a.tcp_port}", f"http://127.0.0.1:{port}/")
        assert no_secret.returncode == 97
        assert origin.heads == []
    finally:
        run_b.close()
        run_a.close()
    assert refused_count(decisions(paths, "run-a")) == 2  # recorded as run A's attempt
    assert decisions(paths, "run-b") == []
    # `krate audit` (the installed command, on the real store) shows the attempt.
    with open_store(paths, readonly=True) as store:
        first = next(iter(events.query(store, kind_prefix="policy.decision", run_id="run-a")))
    krate = str(Path(sys.executable).with_name("krate"))
    shown = subprocess.run([krate, "audit", "show", str(first.seq)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "run_id: run-a" in shown.stdout and '"rule": "proxy credential"' in shown.stdout
    assert run_a.secret not in shown.stdout and run_b.secret not in shown.stdout


def test_a_loopback_run_keeps_its_secret_out_of_every_record(tmp_path, origin):
    """A whole run on the Seatbelt backend's network (`runs.execute`): the workload's
    curl uses the credential from its environment; the secret is in no record, no
    journal line and no file krate keeps."""
    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    paths = Paths(home, home)
    stand_in = tmp_path / "sandbox-exec"  # runs the command as sandbox-exec would, unconfined
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    seatbelt = backend.named("seatbelt", str(stand_in))
    port = origin.port
    policy_ = load_effective(flags_from(None, [f"127.0.0.1:{port}"], None, None, False, None), ws)
    journals = home / "egress"
    script = (
        f'curl -sS -o {ws}/out http://127.0.0.1:{port}/ && printf %s "$HTTP_PROXY" > {ws}/url'
        f" && sleep 0.5 && cat {journals}/*.jsonl > {ws}/journal"
    )
    request = runs.RunRequest(("sh", "-c", script), ws, ws, {"PATH": os.defpath}, as_root=True)
    result = runs.execute(paths, policy_, request, backend=seatbelt)
    assert result.exit_code == 0 and (ws / "out").read_text() == f"hello from {port}\n"
    secret = (ws / "url").read_text().partition("krate:")[2].partition("@")[0]
    assert len(secret) >= 40
    journal = (ws / "journal").read_text()
    assert '"verdict":"allow"' in journal and secret not in journal
    [row] = runs.list_runs(paths)
    assert row.status == "finished"
    [decided] = decisions(paths, row.id)
    assert decided["verdict"] == "allow" and decided["port"] == port
    assert secret not in all_event_text(paths) and secret not in repr(row)
    assert secret.encode() not in store_bytes(home)
    assert "proxy-authorization" not in origin.heads[0].lower()


def test_the_bridge_network_has_no_credential(tmp_path, paths):
    """Linux: the proxy's Unix socket is reachable from the run's sandbox only; nothing changes."""
    session = start_for_run(policy(tmp_path, "example.com:443"), "br", paths, network="bridge")
    try:
        assert session.secret is None
        env = session.env()
        assert env["HTTP_PROXY"] == env["https_proxy"] == "http://127.0.0.1:3128"
        assert env["ALL_PROXY"] == "socks5h://127.0.0.1:1080"
        assert "GIT_HTTP_PROXY_AUTHMETHOD" not in env
    finally:
        session.close()


def test_another_users_process_is_refused(tmp_path, paths, origin, ordinary_user):
    """As root, the attacker is the ordinary test account; run as that account, the
    previous test's attacker (another process of the same user) is the case."""
    if ordinary_user is None:
        pytest.skip("needs root to act as another user")
    session = start_for_run(policy(tmp_path, f"127.0.0.1:{origin.port}"), "r", paths,
                            network="loopback")  # fmt: skip
    try:
        other = subprocess.run(
            ["runuser", "-u", ordinary_user, "--", "curl", "-sS", "-w", "%{http_code}",
             "-x", f"http://127.0.0.1:{session.tcp_port}", f"http://127.0.0.1:{origin.port}/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert other.stdout.endswith("407"), other.stderr
    finally:
        session.close()
    assert origin.heads == [] and refused_count(decisions(paths, "r")) == 1
