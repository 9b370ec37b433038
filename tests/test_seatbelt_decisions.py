"""What the Seatbelt profile decides, asked of the SBPL evaluator (tests/sbpl.py).

No Mac runs these tests: each query is answered from the profile text the way
Seatbelt evaluates it (last match wins, then the default). The specs are built
as a real run builds them (policy -> spec -> the run's TMPDIR, the egress
session's proxy variables), for every policy shape. Paths are what Seatbelt
sees: resolved (`/private/var/...`), sometimes by the data volume's firmlink
(`/System/Volumes/Data/...`), in any case (APFS folds case).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from krate.policy import Flags
from krate.sandbox import seatbelt
from krate.sandbox.spec import build

from .sbpl import decide, parse
from .seatbelt_support import CACHE, DATA, HOME, RUN_TMP, WS, spec_for

FIRM = "/System/Volumes/Data"
PROXY_PORT = 49731


def make_spec(
    tmp_path: Path,
    flags: Flags | None = None,
    *,
    workspace: Path = WS,
    user_policy: str | None = None,
    proxy: bool = False,
    forwards: tuple[int, ...] = (),
):
    env = {"PATH": "/usr/bin:/bin", "HTTP_PROXY": "http://127.0.0.1:9222"}  # the user's own
    spec, _ = spec_for(tmp_path, flags or Flags(), user_policy, workspace=workspace, env=env)
    if proxy:  # as EgressSession.apply does on macOS: the proxy's loopback port in the variables
        url = f"http://127.0.0.1:{PROXY_PORT}"
        env = {**spec.env, "HTTP_PROXY": url, "https_proxy": url}
        env["ALL_PROXY"] = f"socks5h://127.0.0.1:{PROXY_PORT}"
        spec = spec._replace(env=env, network="proxy", loopback_ports=forwards)
    return spec


def make(tmp_path: Path, flags: Flags | None = None, **kw):
    return parse(seatbelt.profile(make_spec(tmp_path, flags, **kw), user_cache=CACHE))


POLICIES = ["strict", "default", "open"]


@pytest.fixture(params=POLICIES)
def prof(request, tmp_path):
    return make(tmp_path, Flags(policy=request.param))


def both(p, op, path, **kw):
    """The decision when `(subpath P)` matches P itself and when it may not (Codex's gap)."""
    answers = {decide(p, op, path, **kw), decide(p, op, path, gap=True, **kw)}
    return answers.pop() if len(answers) == 1 else "differs"


# ---------------------------------------------------------------- files


def test_reads_everywhere_writes_only_in_writable_places(prof):
    assert decide(prof, "file-read*", "/usr/bin/env") == "allow"
    assert decide(prof, "file-read*", f"{HOME}/notes.txt") == "allow"
    assert decide(prof, "file-write*", f"{WS}/build/out.o") == "allow"
    assert decide(prof, "file-read*", f"{WS}/src/main.c") == "allow"
    assert decide(prof, "file-write*", f"{HOME}/notes.txt") == "deny"
    assert decide(prof, "file-write*", "/usr/local/bin/x") == "deny"
    assert decide(prof, "file-write*", "/private/tmp/x") == "deny"


def test_hidden_paths_are_neither_read_nor_written(prof):
    for path in (
        f"{HOME}/.ssh/id_ed25519",
        f"{HOME}/.aws/credentials",
        f"{HOME}/Library/Keychains",
    ):
        assert decide(prof, "file-read*", path) == "deny", path
        assert decide(prof, "file-write*", path) == "deny", path
    # a glob entry: what matches the pattern, now or later
    assert decide(prof, "file-read*", f"{HOME}/.cargo/credentials.toml") == "deny"
    assert decide(prof, "file-read*", f"{HOME}/.cargo/config.toml") == "allow"


def test_tmpdir_under_the_hidden_data_folder_is_readable_and_writable(prof):
    """Issue 16: the TMPDIR allow came before the data folder's hide, so the hide won."""
    for path in (f"{RUN_TMP}/cc1.s", f"{RUN_TMP}/npm-1/x/y"):
        assert decide(prof, "file-read*", path) == "allow", path
        assert decide(prof, "file-write*", path) == "allow", path
    assert decide(prof, "file-read*", str(RUN_TMP)) == "allow"
    # the rest of the data folder stays hidden: the record, other runs' folders
    for path in (f"{DATA}/krate.db", f"{DATA}/run/01m8d0000000ffff/tmp/x", f"{DATA}/policy.toml"):
        assert decide(prof, "file-read*", path) == "deny", path
        assert decide(prof, "file-write*", path) == "deny", path
    # the folders on the way can be stat'ed (realpath) but not listed
    for folder in (DATA, DATA / "run", RUN_TMP.parent):
        assert decide(prof, "file-read-metadata", str(folder)) == "allow", folder
        assert decide(prof, "file-read-data", str(folder)) == "deny", folder
        assert decide(prof, "file-write*", str(folder)) == "deny", folder


def test_protected_names_cannot_be_written_or_created(prof):
    for name in (".envrc", "krate.toml", ".git/hooks/pre-commit", ".git/config", ".git/info/x"):
        path = f"{WS}/{name}"
        assert both(prof, "file-write*", path) == "deny", path
        assert decide(prof, "file-read*", path) == "allow", path
    # the protected name itself, which may not exist yet (first-time creation)
    for name in (".envrc", "krate.toml", ".git/hooks"):
        assert both(prof, "file-write-create", f"{WS}/{name}") == "deny", name
    # git's other files stay writable; .git itself cannot be renamed away
    assert decide(prof, "file-write*", f"{WS}/.git/objects/ab/cdef") == "allow"
    assert decide(prof, "file-write-unlink", f"{WS}/.git") == "deny"
    assert decide(prof, "file-write-create", f"{WS}/.git") == "allow"
    assert decide(prof, "file-write*", f"{HOME}/.zshrc") == "deny"


def test_writable_roots_cannot_be_moved_away_from_their_rules(prof):
    """`mv $WS $TMPDIR/ws`, edit .git/hooks there, move it back: rules follow paths."""
    for root in (WS, RUN_TMP):
        assert decide(prof, "file-write-unlink", str(root)) == "deny", root
        assert decide(prof, "file-write-unlink", f"{FIRM}{root}") == "deny", root
    # what is inside stays removable
    assert decide(prof, "file-write-unlink", f"{WS}/build") == "allow"
    assert decide(prof, "file-write-unlink", f"{RUN_TMP}/x") == "allow"


def test_firmlinked_data_volume_paths_get_the_same_decisions(prof):
    """Issue 16: /System/Volumes/Data/Users/... is the same file as /Users/...."""
    assert decide(prof, "file-read*", f"{FIRM}{HOME}/.ssh/id_ed25519") == "deny"
    assert decide(prof, "file-read*", f"{FIRM}{DATA}/krate.db") == "deny"
    assert both(prof, "file-write*", f"{FIRM}{WS}/.envrc") == "deny"
    assert decide(prof, "file-write*", f"{FIRM}{WS}/.git/hooks/pre-commit") == "deny"
    assert decide(prof, "file-write-unlink", f"{FIRM}{WS}/.git") == "deny"
    assert decide(prof, "file-write*", f"{FIRM}{WS}/build/out.o") == "allow"
    assert decide(prof, "file-write*", f"{FIRM}{RUN_TMP}/x") == "allow"
    assert decide(prof, "file-read*", f"{FIRM}{RUN_TMP}/x") == "allow"
    assert decide(prof, "file-write*", f"{FIRM}{HOME}/notes.txt") == "deny"


@pytest.mark.parametrize(
    "path",
    [
        f"{HOME}/.SSH/id_ed25519",
        "/users/ALICE/.ssh/id_ed25519",
        f"{FIRM.lower()}/users/alice/.Ssh/config",
        f"{HOME}/.Cargo/Credentials.toml",
        f"{HOME}/library/application support/KRATE/krate.db",
    ],
)
def test_case_variants_of_hidden_paths_are_hidden(prof, path):
    """APFS is case-insensitive: ~/.SSH is ~/.ssh."""
    assert decide(prof, "file-read*", path) == "deny"


def test_case_variants_of_writable_paths_are_writable(prof):
    """Whichever spelling the kernel reports, the workspace is the workspace."""
    assert decide(prof, "file-write*", "/users/alice/SRC/App/build/out.o") == "allow"
    assert decide(prof, "file-write*", f"{str(RUN_TMP).upper()}/x") == "allow"


def test_case_variants_of_protected_paths_are_protected(prof):
    for path in (
        f"{WS}/.ENVRC",
        f"{WS}/Krate.toml",
        f"{WS}/.GIT/hooks/pre-commit",
        f"{WS}/.git/HOOKS",
    ):
        assert both(prof, "file-write*", path) == "deny", path
    assert decide(prof, "file-write-unlink", f"{WS}/.Git") == "deny"


def test_hard_links_are_refused_and_hidden_files_not_cloned(prof):
    """A link is checked by its path: a link in the workspace to a read-only or hidden file
    would be written or read through the workspace's rules. The profile names file-link
    itself: Seatbelt may fall back from an operation without rules to a broader one."""
    for path in (f"{HOME}/.ssh/id_ed25519", f"{WS}/.envrc", f"{HOME}/.zshrc", f"{WS}/a.txt"):
        assert decide(prof, "file-link", path) == "deny", path
    assert prof.rules[-1].action == "deny" and prof.rules[-1].ops == {"file-link"}
    assert not prof.rules[-1].filters
    # a clone copies what it reads: no rule allows it, and a hidden file is not readable
    assert decide(prof, "file-clone", f"{HOME}/.ssh/id_ed25519") == "deny"
    assert decide(prof, "file-read-data", f"{HOME}/.ssh/id_ed25519") == "deny"


def test_xcode_user_cache_is_writable_and_preferences_readable(prof):
    assert decide(prof, "file-write*", f"{CACHE}/org.llvm.clang/ModuleCache/x.pcm") == "allow"
    assert decide(prof, "file-write*", "/private/var/folders/zz/other/T/x") == "deny"
    assert decide(prof, "user-preference-read") == "allow"
    assert decide(prof, "mach-lookup", "com.apple.bsd.dirhelper") == "allow"


def test_user_policy_paths(tmp_path):
    p = make(
        tmp_path,
        user_policy="""
[filesystem]
deny_read = ["~/Documents/taxes"]
allow_write = ["~/.cache/pip"]
read_only = [".github/workflows"]
""",
    )
    assert decide(p, "file-read*", f"{HOME}/Documents/taxes/2025.pdf") == "deny"
    assert decide(p, "file-write*", f"{HOME}/.cache/pip/wheels/x") == "allow"
    assert both(p, "file-write*", f"{WS}/.github/workflows/ci.yml") == "deny"
    assert decide(p, "file-write*", f"{WS}/.github/CODEOWNERS") == "allow"


def test_workspace_inside_a_hidden_folder(tmp_path):
    """Issue 16: the workspace's allow must win over the hide of a folder around it."""
    ws = HOME / "work" / "app"
    p = make(tmp_path, Flags(deny_read=("~/work", "~/work/app/.env")), workspace=ws)
    assert decide(p, "file-read*", f"{ws}/main.py") == "allow"
    assert decide(p, "file-write*", f"{ws}/main.py") == "allow"
    # what must still stay hidden: its siblings, a hidden path inside it, the usual stores
    assert decide(p, "file-read*", f"{HOME}/work/other-client/secrets.txt") == "deny"
    assert decide(p, "file-read*", f"{ws}/.env") == "deny"
    assert decide(p, "file-read*", f"{HOME}/.ssh/id_ed25519") == "deny"
    # its protected names stay read-only
    assert both(p, "file-write*", f"{ws}/.envrc") == "deny"
    assert decide(p, "file-read*", f"{ws}/.envrc") == "allow"
    # the hidden folder itself: stat yes (realpath), list no
    assert decide(p, "file-read-metadata", f"{HOME}/work") == "allow"
    assert decide(p, "file-read-data", f"{HOME}/work") == "deny"
    # and the hidden folder cannot be renamed from under the rule
    assert decide(p, "file-write-unlink", f"{ws}/.env") == "deny"


@pytest.mark.parametrize("deny_read", [(), ("~/work",)])
def test_the_pre_run_visibility_check_agrees_with_the_profile(tmp_path, deny_read):
    """`visible_inside` (126/127 before the run) must answer what the profile decides."""
    ws = HOME / "work" / "app"
    spec = make_spec(tmp_path, Flags(deny_read=deny_read), workspace=ws)
    prof = parse(seatbelt.profile(spec, user_cache=CACHE))
    paths = [f"{ws}/build.sh", f"{HOME}/WORK/App/build.sh", f"{FIRM}{ws}/bin/x"]
    paths += [f"{HOME}/work/other/x", f"{HOME}/.ssh/tool", f"{HOME}/.SSH/tool", "/usr/bin/make"]
    paths += [
        f"{FIRM}{HOME}/.ssh/tool",
        f"{RUN_TMP}/x",
        f"{DATA}/bin/x",
        f"{HOME}/.cargo/credentialsx",
    ]
    for path in paths:
        readable = decide(prof, "file-read-data", path) == "allow"
        assert seatbelt.visible_inside(Path(path), spec) is readable, path


# ---------------------------------------------------------------- devices


def test_device_files(prof):
    # /dev/stdout and /dev/stderr are links to /dev/fd/N: Seatbelt checks the target
    for fd in ("0", "1", "2", "7"):
        assert decide(prof, "file-write-data", f"/dev/fd/{fd}") == "allow"
        assert decide(prof, "file-read-data", f"/dev/fd/{fd}") == "allow"
    assert decide(prof, "file-read-metadata", "/dev/stdout") == "allow"
    for dev in ("/dev/null", "/dev/zero", "/dev/tty", "/dev/ptmx", "/dev/dtracehelper"):
        assert decide(prof, "file-read*", dev) == "allow", dev
        assert decide(prof, "file-write-data", dev) == "allow", dev
    assert decide(prof, "file-ioctl", "/dev/ptmx") == "allow"
    assert decide(prof, "file-ioctl", "/dev/tty") == "allow"
    assert decide(prof, "pseudo-tty") == "allow"
    assert decide(prof, "file-read-data", "/dev/urandom") == "allow"
    # a pty the sandbox opened itself (script, node-pty): read, write, ioctl
    assert (
        decide(prof, "file-read*", "/dev/ttys004", extensions=[seatbelt.PTY_EXTENSION]) == "allow"
    )
    assert (
        decide(prof, "file-write-data", "/dev/ttys004", extensions=[seatbelt.PTY_EXTENSION])
        == "allow"
    )
    assert decide(prof, "file-ioctl", "/dev/ttys004") == "allow"
    # another terminal's tty (keystrokes), packet capture, disks: no
    assert decide(prof, "file-read-data", "/dev/ttys004") == "deny"
    assert decide(prof, "file-write-data", "/dev/ttys004") == "deny"
    for dev in ("/dev/bpf0", "/dev/disk0", "/dev/rdisk3s1", "/dev/cu.usbserial"):
        assert decide(prof, "file-read-data", dev) == "deny", dev
        assert decide(prof, "file-write-data", dev) == "deny", dev
    # ioctl only on terminals and the few devices above, not on files
    assert decide(prof, "file-ioctl", f"{WS}/a.txt") == "deny"


# ---------------------------------------------------------------- processes, sysctl, mach


def test_sysctls_are_an_allow_list_without_procargs(prof):
    allowed = ["hw.ncpu", "hw.memsize", "kern.osproductversion", "hw.optional.arm.FEAT_SHA3"]
    allowed += ["kern.proc.pid.4242", "sysctl.proc_translated", "machdep.cpu.brand_string"]
    for name in allowed:
        assert decide(prof, "sysctl-read", name) == "allow", name
    # argv and environment of any of the user's processes, krate's own included
    for name in ("kern.procargs2", "kern.procargs", "kern.proc.all", "kern.uuid", "security.mac.x"):
        assert decide(prof, "sysctl-read", name) == "deny", name
    assert decide(prof, "sysctl-write", "kern.grade_cputype") == "allow"
    assert decide(prof, "sysctl-write", "kern.maxproc") == "deny"


def test_processes_and_services(prof):
    assert decide(prof, "process-exec") == "allow"
    assert decide(prof, "process-fork") == "allow"
    assert decide(prof, "signal", "same-sandbox") == "allow"
    assert decide(prof, "signal", "other") == "deny"
    assert decide(prof, "process-info*", "other") == "deny"
    for service in ("com.apple.securityd", "com.apple.SecurityServer", "com.apple.securityd.xpc"):
        assert decide(prof, "mach-lookup", service) == "deny"
    assert decide(prof, "mach-lookup", "com.apple.trustd.agent") == "allow"
    # starting programs outside the sandbox through LaunchServices or Apple events
    assert decide(prof, "lsopen") == "deny"
    assert decide(prof, "appleevent-send") == "deny"


# ---------------------------------------------------------------- network


def test_loopback_without_egress(prof):
    # a dev server: bind any address (dual-stack, wildcard), accept only from loopback
    for address in ("127.0.0.1:3000", "0.0.0.0:3000", "[::]:5173", "[::1]:8080"):
        assert decide(prof, "network-bind", address) == "allow", address
    assert decide(prof, "network-inbound", "127.0.0.1:3000") == "allow"
    assert decide(prof, "network-inbound", "[::1]:3000") == "allow"
    assert decide(prof, "network-inbound", "192.168.1.20:3000") == "deny"
    # no outbound: not other local services (a browser's debug port, another run's proxy),
    # not the network; the user's own HTTP_PROXY variable opens nothing
    for address in ("127.0.0.1:9222", "127.0.0.1:3128", "[::1]:5432", "93.184.216.34:443"):
        assert decide(prof, "network-outbound", address) == "deny", address


def test_loopback_with_egress_reaches_only_the_proxy_and_forwarded_ports(tmp_path):
    p = make(tmp_path, proxy=True, forwards=(5432,))
    assert decide(p, "network-outbound", f"127.0.0.1:{PROXY_PORT}") == "allow"
    assert decide(p, "network-outbound", "127.0.0.1:5432") == "allow"
    for address in ("127.0.0.1:9222", "127.0.0.1:3128", "127.0.0.1:22", "1.1.1.1:443"):
        assert decide(p, "network-outbound", address) == "deny", address


def test_unix_sockets_only_in_the_runs_writable_places(prof):
    assert decide(prof, "system-socket", "AF_UNIX") == "allow"
    for path in (f"{RUN_TMP}/pymp-1/listener", f"{WS}/.gradle/daemon.sock"):
        assert decide(prof, "network-bind", path) == "allow", path
        assert decide(prof, "network-outbound", path) == "allow", path
    closed = ["/private/var/run/docker.sock", f"{HOME}/.docker/run/docker.sock"]
    closed += [f"{HOME}/.1password/agent.sock", "/private/tmp/com.apple.launchd.x/Listeners"]
    closed += [f"{DATA}/run/01m8d0000000ffff/tmp/s", f"{WS}/.git/hooks/s", f"{CACHE}/s"]
    for path in closed:
        assert decide(prof, "network-outbound", path) == "deny", path
        assert decide(prof, "network-bind", path) == "deny", path


# ---------------------------------------------------------------- the profile's own shape


def test_the_launcher_uses_sandbox_exec_by_absolute_path(tmp_path):
    spec = build(argv=("true",), cwd=WS, workspace=WS, allow_write=(), read_only=(),
                 deny_read=(), env={})  # fmt: skip
    assert seatbelt.command(spec)[0] == "/usr/bin/sandbox-exec"


def test_proxy_port_is_read_only_from_loopback_proxy_urls():
    cases = {
        "http://127.0.0.1:3128": 3128,
        "socks5h://localhost:1080": 1080,
        "http://user:pw@[::1]:8080/": 8080,
        "http://proxy.example:3128": None,
        "http://127.0.0.1": None,
        "http://127.0.0.1:99999": None,
        "": None,
    }
    for url, port in cases.items():
        assert seatbelt._loopback_port(url) == port, url
