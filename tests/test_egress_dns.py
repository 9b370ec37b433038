"""Clients that ignore the proxy variables, through the bridge's DNS, in real `krate run`s.

Python's sockets and http.client, `curl --noproxy '*'` and Node's `fetch` look names up
themselves: krate's bridge answers (egress/bridge_dns.py), the proxy decides per name
(egress/names.py), allowed names reach the loopback test server through the proxy,
denied names get NXDOMAIN and a recorded decision. Then the workload attacks it.

The proxy resolves names with the host's files, so a test name for the loopback
server needs the host's /etc/hosts to have it: krate runs in a private mount
namespace whose /etc/hosts adds it (`named`; root only). The sandbox itself gets
krate's own hosts file, with the loopback names only (egress/etc.py).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import KRATE
from .egress_support import Server

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

NAME = "allowed.krate.test"
DENIED = "denied.krate.test"
NODE = shutil.which("node")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def named(box, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`krate ARGS` as the box's user, with NAME -> 127.0.0.1 in the host's /etc/hosts."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("giving the host a test name needs root and unshare")
    hosts = box.base / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + f"\n127.0.0.1 {NAME}\n")
    hosts.chmod(0o644)
    who: list[str] = []
    if box.user:
        entry = pwd.getpwnam(box.user)
        who = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    inner = f'mount --bind {hosts} /etc/hosts && cd "$0" && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", inner,
            str(box.ws), *who, KRATE, *box.args(args)]  # fmt: skip
    return subprocess.run(argv, env=box.env(), capture_output=True, text=True, timeout=timeout)


def network(box) -> list[dict]:
    return [d for d in box.last_run()["decisions"] if d.get("area") == "network"]


CLIENTS = """
import http.client, socket, sys, time, urllib.request
port = int(sys.argv[1])
family = socket.getaddrinfo("{name}", port, socket.AF_INET, socket.SOCK_STREAM, 0,
                            socket.AI_ADDRCONFIG)[0][4][0]
print("address", family)
t = time.monotonic()
socket.getaddrinfo("{name}", port)  # A and AAAA: the AAAA must be answered, never dropped
print("unspec-fast", time.monotonic() - t < 0.5)
with socket.create_connection(("{name}", port), timeout=5) as s:
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
    print("socket", s.recv(100).split(b" ")[1].decode())
c = http.client.HTTPConnection("{name}", port, timeout=5)
c.request("GET", "/a-path")
print("http.client", c.getresponse().status)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
print("urllib", opener.open(f"http://{name}:{{port}}/", timeout=5).status)
try:
    socket.getaddrinfo("{denied}", port)
    print("denied", "resolved")
except socket.gaierror as exc:
    print("denied", exc.errno == socket.EAI_NONAME)
with socket.create_connection(("{name}", 443), timeout=5) as s:  # a web port: bound inside
    print("port-443", "accepted")
"""

NODE_FETCH = """
const port = process.argv[1];
const show = (what, p) => p.then(r => console.log(what, r.status),
                                 e => console.log(what, e.cause ? e.cause.code : e.message));
show("node", fetch(`http://{name}:${{port}}/`)).then(
  () => show("node-denied", fetch(`http://{denied}:${{port}}/`)));
"""


def test_clients_that_ignore_proxy_variables_reach_allowed_names_only(box, server):
    p = server.port
    script = "; ".join([
        f"{PY} -I -c '{CLIENTS.format(name=NAME, denied=DENIED)}' {p}",
        f"curl -sS --noproxy '*' --max-time 10 -o /dev/null -w 'curl %{{http_code}}\\n' "
        f"http://{NAME}:{p}/",
        f"curl -sS --noproxy '*' --max-time 10 http://{DENIED}:{p}/ 2>/dev/null; "
        "echo curl-denied $?",
        *([f"node -e '{NODE_FETCH.format(name=NAME, denied=DENIED)}' {p}"] if NODE else []),
    ])  # fmt: skip
    out = named(
        box, "run", "--policy", "strict", "--allow-host", NAME, "--allow-host",
        f"{NAME}:{p}", "--allow-host", f"127.0.0.1:{p}", "--", "/bin/sh", "-c", script,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    said = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert said["address"].startswith("127.8.0.")  # a sandbox-loopback address of its own
    assert said["unspec-fast"] == "True"
    assert said["socket"] == said["http.client"] == said["urllib"] == "200"
    assert said["denied"] == "True"
    assert said["port-443"] == "accepted"
    assert said["curl"] == "200"
    assert said["curl-denied"] == "6"  # could not resolve host
    if NODE:
        assert said["node"] == "200"
        assert said["node-denied"] == "ENOTFOUND"
    rows = network(box)
    reached = [r for r in rows if r["host"] == NAME and r["port"] == p]
    assert len(reached) == 4 + (1 if NODE else 0)
    assert all(r["verdict"] == "allow" and r["protocol"] == "dns" for r in reached)
    assert all(r["bytes_down"] > 0 for r in reached)
    assert "a-path" not in json.dumps(rows)
    # the web port was handed over and decided as any CONNECT: the name resolves to a
    # loopback address no rule names for 443, so the proxy refused to dial it
    web = [r for r in rows if r["port"] == 443]
    assert [(r["protocol"], r["verdict"]) for r in web] == [("dns", "deny")]
    assert "loopback" in web[0]["reason"]
    denied = [r for r in rows if r["host"] == DENIED]
    assert len(denied) == 1  # the bridge remembers it: asked once, however often looked up
    assert denied[0]["verdict"] == "deny" and denied[0]["protocol"] == "dns"
    assert denied[0]["port"] is None and denied[0]["rule"].startswith("default")
    assert sorted(r["host"] for r in rows if r["verdict"] == "deny") == [NAME, DENIED]
    shown = box.krate("runs", "show", "last").stdout
    assert f"\tdeny\t{DENIED}\t" in shown


LOOKUPS = """
import socket, sys
for name in sys.argv[1:]:
    try:
        print(name, socket.gethostbyname(name))
    except OSError as exc:
        print(name, type(exc).__name__)
"""


def test_denied_names_get_nxdomain_and_are_recorded(box):
    # No host name needed: the answer comes from the policy, not from resolving.
    out = box.sh(
        f"{PY} -I -c '{LOOKUPS}' registry.example evil.example registry.example. localhost; "
        "getent hosts evil.example; echo getent $?",
        "--policy", "strict", "--allow-host", "registry.example",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    said = dict(line.split(None, 1) for line in out.stdout.strip().splitlines())
    assert said["registry.example"] == said["registry.example."] == "127.8.0.1"
    assert said["evil.example"] == "gaierror"
    assert said["localhost"] == "127.0.0.1"  # the sandbox's hosts file: never asked
    assert said["getent"] == "2"
    rows = network(box)
    assert [(r["host"], r["port"], r["verdict"], r["protocol"]) for r in rows] == [
        ("evil.example", None, "deny", "dns")
    ]
    recorded = [e["data"] for e in box.events("policy.decision")]
    assert [d["subject"] for d in recorded if d.get("area") == "network"] == ["evil.example"]


ATTACKS = """
import os, socket, subprocess, sys, time
def try_bind(kind, host, port, *opts):
    s = socket.socket(socket.AF_INET, kind)
    for opt in opts:
        s.setsockopt(socket.SOL_SOCKET, opt, 1)
    try:
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        return "bound"
    except OSError as exc:
        return exc.strerror
    finally:
        s.close()
both = (socket.SO_REUSEADDR, socket.SO_REUSEPORT)
for host in ("127.0.0.1", "127.0.0.53"):
    print(f"udp53-{host}", try_bind(socket.SOCK_DGRAM, host, 53, *both).replace(" ", "_"))
    print(f"tcp53-{host}", try_bind(socket.SOCK_STREAM, host, 53, *both).replace(" ", "_"))
taken = socket.gethostbyname("registry.example")
print("rebind-443", try_bind(socket.SOCK_STREAM, taken, 443, *both).replace(" ", "_"))
query = bytes.fromhex("abcd01000001000000000000") + b"\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01"
for server in sys.argv[1:] + ["8.8.8.8", "1.1.1.1", "10.255.255.53"]:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1)
    try:
        u.sendto(query, (server, 53))
        print(f"resolver-udp-{server}", "answered" if u.recv(512) else "nothing")
    except OSError as exc:
        print(f"resolver-udp-{server}", type(exc).__name__)
    t = socket.socket()
    t.settimeout(1)
    try:
        t.connect((server, 53))
        print(f"resolver-tcp-{server}", "connected")
    except OSError as exc:
        print(f"resolver-tcp-{server}", type(exc).__name__)
knob = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
try:
    with open(knob, "w") as f:
        f.write("1024")
    print("knob-write", "written")
except OSError as exc:
    print("knob-write", type(exc).__name__)
print("knob", open(knob).read().strip())
sysctl = subprocess.run(["sh", "-c", "echo 1024 > " + knob], capture_output=True)
print("knob-shell", sysctl.returncode)
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")]
print("capeff", caps[0])
"""


def host_resolvers() -> list[str]:
    out = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver" and ":" not in words[1]:
                out.append(words[1])
    except OSError:
        pass
    return out


def host_network_state() -> tuple[str, str]:
    knob = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    lo = subprocess.run(["ip", "-o", "addr", "show", "lo"], capture_output=True, text=True)
    return knob, lo.stdout


def test_the_workload_cannot_take_over_or_bypass_the_dns(box):
    before = host_network_state()
    resolvers = " ".join(host_resolvers())
    out = box.sh(
        f"{PY} -I -c '{ATTACKS}' {resolvers}", "--policy", "strict", "--allow-host",
        "registry.example",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    said = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    for key in ("udp53-127.0.0.1", "tcp53-127.0.0.1", "udp53-127.0.0.53", "tcp53-127.0.0.53",
                "rebind-443"):  # fmt: skip
        assert said[key] == "Address_already_in_use", (key, said[key])
    for key, value in said.items():
        if key.startswith("resolver-"):
            assert value in ("OSError", "TimeoutError", "ConnectionRefusedError"), (key, value)
            if key.endswith(("8.8.8.8", "1.1.1.1", "10.255.255.53")) or "udp" in key:
                assert value != "answered"
    assert said["knob-write"] in ("OSError", "PermissionError")
    assert said["knob"] == "0"
    assert said["knob-shell"] != "0"
    assert said["capeff"] == "0000000000000000"
    assert host_network_state() == before  # set inside the sandbox's namespace only


FLOOD = """
import socket, sys
count, got, failed = int(sys.argv[1]), set(), 0
for i in range(count):
    try:
        got.add(socket.gethostbyname(f"n{i}.flood.example"))
    except OSError:
        failed += 1
for i in range(int(sys.argv[2])):
    try:
        socket.gethostbyname(f"d{i}.nowhere.example")
    except OSError:
        failed += 1
print(len(got), failed)
"""


def test_thousands_of_names_hit_the_cap(box):
    out = box.sh(
        f"{PY} -I -c '{FLOOD}' 300 1500", "--policy", "strict", "--allow-host", "*.flood.example",
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got, failed = map(int, out.stdout.split())
    assert got == 256  # the cap: every name beyond it fails
    assert failed == 300 - 256 + 1500
    rows = network(box)
    capped = [r for r in rows if r.get("rule") == "name cap"]
    assert capped and all(r["verdict"] == "deny" for r in capped)
    assert sum(r.get("repeats") or 1 for r in rows if r["verdict"] == "deny") == 44 + 1500
    assert len(rows) < 300  # coalesced: the record is not flooded


QUERIES = """
import glob, socket, sys, time
answers = []
for i in range(300):
    for _ in range(500):  # the proxy may still be starting (the bridge waits the same way)
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect((glob.glob("/tmp/krate-egress-*/proxy.sock") or ["none"])[0])
            break
        except OSError:
            s.close()
            time.sleep(0.01)
    s.sendall(f"\\0Q n{i}.flood.example\\n".encode())
    answers.append(s.recv(100).decode().strip())
    s.close()
print(answers.count("A 80,443"), answers.count("F"))
"""


def test_the_proxy_caps_names_even_when_the_bridge_is_bypassed(box):
    # The workload speaks the bridge's protocol to the proxy itself: the cap is the proxy's.
    out = box.sh(
        f"{PY} -I -c '{QUERIES}'",
        "--policy", "strict", "--allow-host", "*.flood.example",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["256", "44"]


def test_no_network_runs_keep_the_hosts_resolver_files(box):
    out = box.sh("cat /etc/resolv.conf", "--no-network")
    assert out.returncode == 0, out.stderr
    assert out.stdout == Path("/etc/resolv.conf").read_text()
    assert "127.8." not in out.stdout


# -- the pure parts: the DNS server's parser, the proxy's answer, the resolver files


def dns_module():
    """bridge_dns.py loaded as the bridge loads it: by file, into its own namespace."""
    from krate.egress.spawn import BRIDGE_DNS

    space: dict = {"__name__": "bridge_dns"}
    exec(compile(BRIDGE_DNS.read_bytes(), str(BRIDGE_DNS), "exec"), space)  # noqa: S102
    return space


def query(name: str, qtype: int = 1, qid: bytes = b"\x12\x34") -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    head = qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    return head + labels + qtype.to_bytes(2, "big") + b"\x00\x01"  # class IN


class FakeBridge:
    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.asked, self.bound = answers, [], []

    def ask(self, name: str) -> str:
        self.asked.append(name)
        return self.answers.get(name, "N")

    def listen(self, host: str, port: int):
        self.bound.append((host, port))
        s = socket_module().socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s


def socket_module():
    import socket

    return socket


def test_the_dns_server_answers_a_aaaa_and_nxdomain_and_asks_once():
    dns = dns_module()
    fake = FakeBridge({"ok.example": "A 80,443"})
    names = dns["Names"](fake.ask, fake.listen, lambda client, target: None)
    a = names.answer(query("OK.example"))
    assert a[:2] == b"\x12\x34" and a[3] & 15 == 0 and a[6:8] == b"\x00\x01"
    assert a[-4:] == bytes((127, 8, 0, 1))
    aaaa = names.answer(query("ok.example", 28))
    assert aaaa[3] & 15 == 0 and aaaa[6:8] == b"\x00\x00"  # answered, empty: never silence
    nx = names.answer(query("no.example"))
    assert nx[3] & 15 == 3 and names.answer(query("no.example", 28))[3] & 15 == 3
    ptr = names.answer(query("1.0.8.127.in-addr.arpa", 12))
    assert b"\x02ok\x07example\x00" in ptr
    assert names.answer(query("9.9.9.10.in-addr.arpa", 12))[3] & 15 == 3
    assert fake.asked == ["ok.example", "no.example"]  # each name once; reverse never
    assert fake.bound == [("127.8.0.1", 80), ("127.8.0.1", 443)]


def test_the_dns_server_survives_garbage():
    import random

    dns = dns_module()
    fake = FakeBridge({})
    names = dns["Names"](fake.ask, fake.listen, lambda client, target: None)
    rng = random.Random(18)
    good = query("x.example")
    for _ in range(3000):
        packet = bytearray(good if rng.random() < 0.5 else rng.randbytes(rng.randrange(40)))
        for _ in range(rng.randrange(4)):
            if packet:
                packet[rng.randrange(len(packet))] = rng.randrange(256)
        out = names.answer(bytes(packet))
        assert out is None or (len(out) >= 12 and out[:2] == bytes(packet[:2]))
    assert names.answer(b"\x00" * 5) is None
    compressed = good[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    assert names.answer(compressed)[3] & 15 == 1  # FORMERR


def test_the_proxy_answers_ports_per_name_and_caps_names(tmp_path):
    from krate.egress import compile_rules
    from krate.egress.dial import Dialer
    from krate.egress.names import Names

    from .egress_support import policy

    pol = policy(tmp_path, "a.example", "*.b.example:8443", "c.example:*", "1.2.3.4")
    rules = compile_rules(pol)
    lines: list[dict] = []

    class Proxy:
        count = 0
        emit = staticmethod(lines.append)

        def next_number(self) -> int:
            self.count += 1
            return self.count

    names = Names(rules, Dialer(rules, list(pol.net_default), 1.0), Proxy(), cap=3)
    assert names("A.example.") == "A 80,443"
    assert names("x.b.example") == "A 8443"
    assert names("b.example") == "N"
    assert names("c.example") == "A 80,443"  # any port: the web ports get listeners
    assert names("d.example") == "N"
    assert names("1.2.3.4") == "N"  # an address is never looked up
    assert names("y.b.example") == "F"  # the cap
    assert names("a.example") == "A 80,443"  # known names still answer
    assert [(x["host"], x["port"], x["verdict"], x["protocol"]) for x in lines] == [
        ("b.example", None, "deny", "dns"), ("d.example", None, "deny", "dns"),
        ("1.2.3.4", None, "deny", "dns"), ("y.b.example", None, "deny", "dns"),
    ]  # fmt: skip
    assert lines[-1]["rule"] == "name cap" and [x["n"] for x in lines] == [1, 2, 3, 4]


def test_the_resolver_files(tmp_path):
    from krate.egress import etc

    (tmp_path / "nsswitch.conf").write_text("passwd: files\nhosts:  files  # local only\n")
    (tmp_path / "resolv.conf").symlink_to("/run/krate-test-absent/stub-resolv.conf")
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n10.1.2.3 mirror.corp\n")
    binds = {str(b.dest): b.data.decode() for b in etc.binds(str(tmp_path))}
    # a symlink into /run (a fresh tmpfs inside) is followed: bubblewrap would fail on it
    assert binds["/run/krate-test-absent/stub-resolv.conf"].startswith("nameserver 127.0.0.1\n")
    assert "search .\n" in binds["/run/krate-test-absent/stub-resolv.conf"]
    assert binds[str(tmp_path / "nsswitch.conf")] == "passwd: files\nhosts: files dns\n"
    assert "mirror.corp" not in binds[str(tmp_path / "hosts")]
    assert etc.nsswitch("hosts: files mdns4_minimal [NOTFOUND=return] dns\n") is None
    (tmp_path / "resolv.conf").unlink()
    (tmp_path / "resolv.conf").symlink_to("/nonexistent-krate/resolv.conf")
    assert all(b.dest.name != "resolv.conf" for b in etc.binds(str(tmp_path)))


def test_only_the_bridge_serves_dns(tmp_path, krate_home):
    """Seatbelt's loopback proxy has no bridge: no DNS, nothing bound over /etc."""
    from krate.egress import start_for_run
    from krate.paths import Paths
    from krate.sandbox.backend import BRIDGE, LOOPBACK

    from .egress_support import policy

    paths = Paths.from_env({"KRATE_HOME": str(krate_home)})
    for network, dns in ((LOOPBACK, False), (BRIDGE, True)):
        session = start_for_run(policy(tmp_path, "a.example"), f"r{network}", paths,
                                network=network)  # fmt: skip
        try:
            session.hold() if network == BRIDGE else None
            assert session.dns is dns
            assert ("--dns" in session.wrap_argv(["true"])) is dns
            assert (session.bridge is not None and session.bridge.before_go is not None) is dns
        finally:
            session.close()
