"""Every hint krate prints works, and a name resolving to a private address needs its opt-in.

Real runs of the installed `krate` (as root and as an ordinary user), a real HTTP
server on loopback, real curl in the sandbox through the real proxy. The name
`mirror.corp.example` resolves to 127.0.0.1 for krate and its proxy only: krate is
started under bubblewrap with its own /etc/hosts (as a corporate mirror resolves to a
private address). Each test takes the hint exactly as krate printed it, applies it
literally, and checks that the same connection then goes through.
"""

from __future__ import annotations

import json
import pwd
import re
import shutil
import subprocess

import pytest

from .conftest import KRATE
from .egress_support import Server

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

NAME = "mirror.corp.example"
# The flag in a hint, wherever krate printed it: 403 body, summary, explain, record.
FLAG = re.compile(r"(--allow-(?:private-)?host) (\S+)")
# Some network, so the run has its proxy (a run without network has none to refuse).
BASE = ("--policy", "strict", "--allow-host", "localhost:9")
CURL = "curl -sS --max-time 10 -w '\\n%{http_code}\\n'"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def mapped(box):
    """Run the installed krate in `box` with NAME (and another name) resolving to 127.0.0.1."""
    hosts = box.base / "hosts"
    hosts.write_text(
        f"127.0.0.1 localhost\n::1 localhost\n127.0.0.1 {NAME}\n127.0.0.1 other.corp.example\n"
    )
    hosts.chmod(0o644)

    def krate(*args: str) -> subprocess.CompletedProcess:
        argv = ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(hosts), "/etc/hosts"]
        kw: dict = {"env": box.env(), "cwd": box.ws, "capture_output": True, "text": True}
        if box.user:
            kw.update(user=box.user, group=pwd.getpwnam(box.user).pw_gid, extra_groups=[])
        return subprocess.run([*argv, KRATE, *box.args(args)], timeout=120, **kw)

    return krate


def hint(text: str) -> list[str]:
    """The one flag a hint names, as arguments: `["--allow-host", "x:1"]`."""
    found = FLAG.findall(text)
    assert len(set(found)) == 1, text
    return list(found[0])


def network(box) -> list[dict]:
    shown = box.last_run()
    return [d for d in shown["decisions"] if d.get("area") == "network"]


def follow(attempt, hint_of) -> list[list[str]]:
    """Apply hints until the connection is allowed; the hints applied, in order."""
    flags: list[str] = []
    applied = []
    for _ in range(3):
        result = attempt(flags)
        if result is True:
            return applied
        found = hint_of(result)
        applied.append(found)
        flags += found
    raise AssertionError(f"still refused after {applied}")


def expected(port: int) -> list[list[str]]:
    """The two hints, in the order krate gives them."""
    return [["--allow-host", f"{NAME}:{port}"], ["--allow-private-host", NAME]]


def test_the_403_body_hints_work(box, server, mapped):
    url = f"http://{NAME}:{server.port}/"

    def attempt(flags):
        out = mapped("run", *BASE, *flags, "--", "sh", "-c", f"{CURL} {url}")
        assert out.returncode == 0, out.stderr
        return True if out.stdout.endswith("\n200\n") else out.stdout

    def from_body(body: str) -> list[str]:
        assert body.endswith("\n403\n") and "To allow it: krate run --allow" in body, body
        return hint(body.split("To allow it:")[1])

    assert follow(attempt, from_body) == expected(server.port)
    allowed = network(box)[-1]
    assert allowed["verdict"] == "allow" and allowed["address"] == "127.0.0.1"
    assert allowed["reason"] == f"private address allowed by --allow-private-host {NAME}"


def test_the_socks_refusal_hint_in_the_record_works(box, server, mapped):
    url = f"http://{NAME}:{server.port}/"

    def attempt(flags):
        script = f'{CURL} -x "$ALL_PROXY" {url}'
        out = mapped("run", *BASE, *flags, "--", "sh", "-c", script)
        return True if out.stdout.endswith("\n200\n") else out

    def from_record(out) -> list[str]:
        assert out.returncode == 97, out  # curl: the SOCKS5 proxy refused
        denied = network(box)[-1]
        assert denied["verdict"] == "deny" and denied["protocol"] == "socks5"
        assert denied["hint"] in denied["reason"]
        return hint(denied["hint"])

    assert follow(attempt, from_record) == expected(server.port)


def test_the_end_of_run_summary_hints_work_and_quiet_silences_it(box, server, mapped):
    url = f"http://{NAME}:{server.port}/"
    summaries = []

    def attempt(flags):
        out = mapped("run", *BASE, *flags, "--", "sh", "-c", f"{CURL} {url}")
        if out.stdout.endswith("\n200\n"):
            assert "refused" not in out.stderr, out.stderr
            return True
        summaries.append(out.stderr)
        return out.stderr

    def from_summary(stderr: str) -> list[str]:
        lines = [line for line in stderr.splitlines() if "(1x)" in line]
        assert len(lines) == 1, stderr
        return hint(lines[0].split("allow with")[1])

    assert follow(attempt, from_summary) == expected(server.port)
    first, second = summaries
    assert "krate: 1 connection refused:" in first and "not in network.allow" in first
    assert "krate: details: krate runs show last" in first
    assert f"{NAME}:{server.port} (1x): resolves to 127.0.0.1 (loopback address" in second
    assert f'private_ok = ["{NAME}"]' in second  # the policy line for the same opt-in
    quiet = mapped("run", "--quiet", *BASE, "--", "sh", "-c", f"{CURL} {url}")
    assert quiet.stdout.endswith("\n403\n") and "refused" not in quiet.stderr, quiet.stderr


def test_policy_explain_resolves_as_a_run_would_and_its_hints_work(box, server, mapped):
    url = f"http://{NAME}:{server.port}/some/path"
    answers = []

    def attempt(flags):
        out = mapped("policy", "explain", "net", url, *BASE, *flags)
        assert out.returncode == 0, out.stderr
        answers.append(out.stdout)
        return True if out.stdout.startswith("allow\t") else out.stdout

    def from_explain(text: str) -> list[str]:
        assert text.startswith(f"deny\t{NAME}:{server.port}\t"), text
        return hint(text.split("to allow it:")[1])

    applied = follow(attempt, from_explain)
    assert applied == expected(server.port)
    # The rule alone would allow it; only resolving shows what a run would meet.
    assert answers[1].split("\t")[0] == "deny" and "resolves to 127.0.0.1" in answers[1]
    flags = [a for pair in applied for a in pair]
    no_resolve = mapped("policy", "explain", "net", url, *BASE, flags[0], flags[1], "--no-resolve")
    assert no_resolve.stdout.startswith("allow\t"), no_resolve.stdout
    # What explain allowed, a run reaches.
    out = mapped("run", *BASE, *flags, "--", "sh", "-c", f"{CURL} {url}")
    assert out.stdout.endswith("\n200\n"), out


# The policy-side fix for a private-address denial, as the summary prints it.
POLICY_FIX = re.compile(r"^krate: +or for every run: krate (policy allow --private \S+)$", re.M)


def test_the_policy_command_printed_for_a_private_address_works(box, server, mapped):
    """`krate policy allow --private`, as the summary and `explain` print it, applied
    literally (it writes the user policy): the same connection then goes through with no
    flag at all, and only that one: another name resolving to loopback stays refused."""
    p = server.port
    url = f"http://{NAME}:{p}/"
    allow = ("--allow-host", f"{NAME}:{p}")
    out = mapped("run", *allow, "--", "sh", "-c", f"{CURL} {url}")
    assert out.stdout.endswith("\n403\n"), out
    assert POLICY_FIX.findall(out.stderr) == [f"policy allow --private {NAME}:{p}"], out.stderr
    command = POLICY_FIX.findall(out.stderr)[0].split()
    explained = mapped("policy", "explain", "net", url, *allow)
    assert explained.stdout.startswith(f"deny\t{NAME}:{p}\t"), explained.stdout
    assert f"(for every run: krate {' '.join(command)})" in explained.stdout
    assert "resolves to 127.0.0.1" in explained.stdout
    as_json = json.loads(mapped("policy", "explain", "net", url, *allow, "--json").stdout)
    assert as_json["command"] == f"krate {' '.join(command)}"
    assert as_json["hint"] == f"--allow-private-host {NAME}"  # the flag stays next to it
    done = mapped(*command)
    assert done.returncode == 0, done.stderr
    assert f"added {NAME}:{p}" in done.stderr and f"added {NAME} " in done.stderr
    again = mapped(*command)  # idempotent
    assert again.returncode == 0 and "nothing changed" in again.stderr, again.stderr
    text = (box.krate_home / "policy.toml").read_text()
    assert text.count(f'"{NAME}:{p}"') == 1 and text.count(f'"{NAME}"') == 1, text
    assert mapped("policy", "explain", "net", url).stdout.startswith("allow\t")
    other = f"http://other.corp.example:{p}/"
    out = mapped("run", "--", "sh", "-c", f"{CURL} {url}; {CURL} {other}")
    assert "\n200\n" in out.stdout and out.stdout.endswith("\n403\n"), out
    allowed, denied = network(box)[-2:]
    assert allowed["reason"] == f"private address allowed by network.private_ok: {NAME}"
    assert allowed["verdict"] == "allow" and allowed["address"] == "127.0.0.1"
    assert denied["verdict"] == "deny" and denied["host"] == "other.corp.example"
    assert "other.corp.example" in out.stderr and NAME not in out.stderr.split("refused")[-1]


def test_a_name_resolving_to_loopback_needs_its_own_opt_in(box, server, mapped):
    """Rebinding: an allowed name answering 127.0.0.1 is refused and recorded; an opt-in
    for another name changes nothing; the opt-in for this name, given with `allow`, works."""
    p = server.port
    url = f"http://{NAME}:{p}/"
    allow = ["--allow-host", f"{NAME}:{p}", "--allow-host", "other.corp.example"]

    def reach(*flags: str) -> str:
        out = mapped("run", *BASE, *allow, *flags, "--", "sh", "-c", f"{CURL} {url}")
        return out.stdout.rsplit("\n", 2)[-2]

    assert reach() == "403"
    denied = network(box)[-1]
    assert denied["verdict"] == "deny" and denied["address"] is None
    assert denied["reason"].startswith(f"{NAME} resolves to 127.0.0.1 (loopback address")
    # The table says why, not only which rule allowed the name (the reason column).
    table = mapped("runs", "show", "last").stdout.splitlines()
    assert "seq\tarea\tverdict\tsubject\trule\tlayer\treason" in table
    row = next(line for line in table if f"\tdeny\t{NAME}:{p}\t" in line)
    assert row.endswith(f"\t{denied['reason']}") and f"--allow-private-host {NAME}" in row
    assert reach("--allow-private-host", "other.corp.example") == "403"
    assert network(box)[-1]["verdict"] == "deny"
    assert reach("--allow-private-host", NAME) == "200"
    started = box.events("run.started")[-1]["data"]
    assert started["policy"]["private_ok"] == [f"--allow-private-host {NAME}"]
    # The same opt-in from the user's policy file.
    policy = box.krate_home / "policy.toml"
    policy.parent.mkdir(exist_ok=True)
    policy.write_text(f'[network]\nadd = ["{NAME}:{p}"]\nprivate_ok = ["{NAME}"]\n')
    if box.user:
        shutil.chown(policy, box.user)
        shutil.chown(policy.parent, box.user)
    out = mapped("run", "--", "sh", "-c", f"{CURL} {url}")  # (--policy would replace its list)
    assert out.stdout.endswith("\n200\n"), out
    assert network(box)[-1]["reason"] == f"private address allowed by network.private_ok: {NAME}"


def test_private_ok_alone_is_an_error_naming_what_to_add(box, mapped):
    flag = mapped("run", "--allow-private-host", NAME, "--", "true")
    assert flag.returncode == 2
    assert flag.stderr.strip().splitlines() == [
        f"krate: --allow-private-host {NAME}: {NAME} is not an allowed host; a private "
        f"address is allowed only for an allowed host: add --allow-host {NAME}"
    ]
    policy = box.krate_home / "policy.toml"
    policy.parent.mkdir(exist_ok=True)
    policy.write_text(f'# mirror\n[network]\nprivate_ok = ["{NAME}"]\n')
    if box.user:
        shutil.chown(policy, box.user)
        shutil.chown(policy.parent, box.user)
    out = mapped("run", "--", "true")
    assert out.returncode == 125
    assert out.stderr.startswith(f"krate: {policy}:3: `network.private_ok`: `{NAME}` is not in")
    assert "Traceback" not in out.stderr


def test_hundreds_of_denials_stay_a_few_lines(box, server, mapped):
    p = server.port
    script = (
        f"for i in $(seq 0 149); do curl -s -o /dev/null http://127.0.0.1:$(({p} + i % 30 + 1))/;"
        " done; true"
    )
    env_secret = {"GITHUB_TOKEN": "x", "NPM_TOKEN": "y"}
    box_env = box.env
    box.env = lambda **extra: box_env(**env_secret, **extra)  # type: ignore[method-assign]
    try:
        out = mapped("run", *BASE, "--", "sh", "-c", script)
    finally:
        box.env = box_env  # type: ignore[method-assign]
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("krate:")]
    assert lines[0] == "krate: 150 connections refused:", out.stderr
    assert len(lines) <= 10, out.stderr
    assert "krate:   and 25 more hosts (125 connections)" in lines
    assert "krate: 2 secret-looking variables stripped (GITHUB_TOKEN, NPM_TOKEN)" in out.stderr
    assert lines[-1] == "krate: details: krate runs show last"
    shown = json.loads(mapped("runs", "show", "last", "--json").stdout)
    assert sum(h["connections"] for h in shown["hosts"] if h["verdict"] == "deny") == 150


def test_build_says_what_was_refused_too(box, server, mapped):
    url = f"http://{NAME}:{server.port}/"
    script = f"{CURL} {url}; echo built > out.txt"
    out = mapped("build", *BASE, "--out", "out.txt", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert "krate: 1 connection refused:" in out.stderr
    assert f"allow with --allow-host {NAME}:{server.port}" in out.stderr
