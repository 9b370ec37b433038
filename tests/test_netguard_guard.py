"""The in-process guard: refuses Python-level network use, names file and line, exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from .conftest import run_krate

ATTEMPTS = {
    "getaddrinfo": "socket.getaddrinfo('telemetry.example.com', 443)",
    "gethostbyname": "socket.gethostbyname('telemetry.example.com')",
    "inet_socket": "socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
    "inet6_socket": "socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)",
    "urlopen": "urllib.request.urlopen('https://t.example.com:8443/p/a/t/h?token=SECRET')",
    "http_client": "http.client.HTTPConnection('t.example.com', 80).connect()",
}


def guarded(body: str) -> dict:
    code = textwrap.dedent(
        """
        import http.client, json, socket, sys, urllib.request
        from krate.netguard import guard
        guard.install()
        out = {}
        try:
            BODY
            out["result"] = "allowed"
        except PermissionError as exc:
            out["result"] = type(exc).__name__
        out["violations"] = [v.to_dict() for v in guard.violations()]
        print(json.dumps(out))
        """
    ).replace("BODY", body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    out["stderr"] = done.stderr
    return out


def test_each_python_level_attempt_is_refused_and_attributed():
    for name, body in ATTEMPTS.items():
        out = guarded(body)
        assert out["result"] == "NetworkRefused", name
        (violation,) = out["violations"]
        assert violation["file"] == "<string>", name
        assert violation["line"] == 7, name  # the BODY line of the script above
        assert "krate: refused network access" in out["stderr"]


def test_recorded_target_is_host_and_port_only_never_a_path_or_query():
    out = guarded(ATTEMPTS["urlopen"])
    (violation,) = out["violations"]
    assert violation["event"] == "urllib.Request"
    assert violation["target"] == "t.example.com:8443"
    assert "SECRET" not in json.dumps(out) and "/p/a/t/h" not in json.dumps(violation)


def test_unix_sockets_stay_allowed():
    out = guarded("a, b = socket.socketpair(); a.sendall(b'x'); assert b.recv(1) == b'x'")
    assert out["result"] == "allowed" and out["violations"] == []
    out = guarded("socket.socket(socket.AF_UNIX).close()")
    assert out["result"] == "allowed"


def test_guard_costs_nothing_when_nothing_tries():
    out = guarded("import email.utils, sqlite3; sqlite3.connect(':memory:').execute('select 1')")
    assert out["result"] == "allowed" and out["violations"] == []


def _plugin(tmp_path, body: str, module: str = "annotated_doc") -> dict:
    """A module on PYTHONPATH shadowing a dependency (annotated_doc: typer imports it).

    The command attacked must go through Typer (`audit verify`): the light commands that
    cli/fastread.py parses load no third-party package at all.
    """
    pkg = tmp_path / "evil" / module
    pkg.mkdir(parents=True)
    real = (
        "import importlib, os, sys\n"
        "here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))\n"
        "saved = list(sys.path); del sys.modules[__name__]\n"
        "sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != here]\n"
        "real = importlib.import_module(__name__); sys.path[:] = saved\n"
        "sys.modules[__name__] = real\n"
    )
    (pkg / "__init__.py").write_text(
        f"import socket\ntry:\n    {body}\nexcept BaseException:\n    pass\n{real}"
    )
    return dict(os.environ, PYTHONPATH=str(tmp_path / "evil"))


def test_name_resolution_alone_is_caught_recorded_and_exits_1(tmp_path, krate_home):
    assert run_krate("audit", "note", "before").returncode == 0
    env = _plugin(tmp_path, "socket.getaddrinfo('telemetry.example.com', 443)")
    result = run_krate("audit", "verify", env=env)
    assert result.returncode == 1
    where = f"{tmp_path}/evil/annotated_doc/__init__.py:3"
    assert f"socket.getaddrinfo to telemetry.example.com:443, attempted by {where}" in result.stderr
    assert "krate: stopped:" in result.stderr
    events = json.loads(run_krate("audit", "list", "--kind", "guard.", "--json").stdout)
    (event,) = events
    assert event["kind"] == "guard.violation"
    assert event["data"]["event"] == "socket.getaddrinfo"
    assert f"{event['data']['file']}:{event['data']['line']}" == where
    assert event["data"]["command"] == "krate audit verify"
    assert run_krate("audit", "verify").returncode == 0
    shown = run_krate("audit", "network")
    assert "1 attempt refused by the guard" in shown.stdout.splitlines()[0]
    assert where in shown.stdout


def test_tab_completion_refuses_but_never_opens_the_database(tmp_path, krate_home):
    # shellingham is imported by typer's completion support.
    env = _plugin(tmp_path, "socket.getaddrinfo('telemetry.example.com', 443)", "shellingham")
    # An option's values: Typer completes them (command names never load Typer at all).
    env.update(_KRATE_COMPLETE="complete_bash", COMP_WORDS="krate run --policy ", COMP_CWORD="3")
    result = run_krate(env=env)
    assert "refused network access: socket.getaddrinfo" in result.stderr
    assert "shellingham/__init__.py:3" in result.stderr
    assert result.returncode == 1
    assert not krate_home.exists()
