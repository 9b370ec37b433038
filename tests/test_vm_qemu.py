"""`krate run --vm`: real micro-VM boots under QEMU (emulated where KVM does not work).

Each boot costs a few seconds under TCG, so each test boots once and checks
several things in that boot. They run wherever QEMU, a kernel with 9p and a
static busybox are installed (scripts/install --dev installs them); a missing or
hanging KVM never skips them: krate falls back to emulation.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from krate.sandbox import vm

from .conftest import KRATE, chown_tree, wait_for
from .egress_support import Server
from .terminal_support import Terminal

MISSING = [p.name for p in vm.status(plat="linux") if p.found is None]
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(bool(MISSING), reason=f"micro-VM parts missing: {MISSING}"),
]
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APPLETS = ("sh", "echo", "cat", "ls", "id", "mkdir", "mount", "touch", "sleep", "kill", "wget",
           "nc", "test", "true", "chroot", "cut", "tail", "tr", "head", "wc",
           "sha256sum", "stty")  # fmt: skip


@pytest.fixture(scope="module")
def image_root():
    """A one-binary image root (busybox), root-owned and world-readable, as images unpack."""
    base = Path(tempfile.mkdtemp(prefix="krate-vm-root-", dir="/var/tmp"))
    base.chmod(0o755)
    root = base / "root"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "hello").write_text("from the image\n")
    for d in (base, root, root / "bin", root / "etc"):
        d.chmod(0o755)
    yield root
    shutil.rmtree(base, ignore_errors=True)


class VmBox:
    """A workspace and a krate home shared by the module's boots (the guest is built once)."""

    def __init__(self, user: str | None) -> None:
        self.user = user
        self.base = Path(tempfile.mkdtemp(prefix="krate-vm-", dir="/var/tmp"))
        self.base.chmod(0o755)
        self.home = self.base / "home"
        self.ws = self.base / "ws"
        self.home.mkdir()
        self.ws.mkdir()
        if user:
            chown_tree(self.base, user)

    def fresh_ws(self, name: str) -> Path:
        ws = self.base / name
        ws.mkdir()
        if self.user:
            chown_tree(ws, self.user)
        return ws

    def env(self) -> dict[str, str]:
        return {"PATH": BASE_PATH, "HOME": str(self.home), "KRATE_HOME": str(self.home / "k"),
                "LANG": "C.UTF-8"}  # fmt: skip

    def argv(self, root: Path, *args: str) -> list[str]:
        as_root = ["--as-root"] if self.user is None and os.geteuid() == 0 else []
        return [KRATE, "run", "--vm", "--rootfs", str(root), *as_root, *args]

    def kw(self, cwd: Path) -> dict:
        kw: dict = {"cwd": cwd, "env": self.env()}
        if self.user:
            kw.update(user=self.user, group=pwd.getpwnam(self.user).pw_gid, extra_groups=[])
        return kw

    def run(
        self, root: Path, *args: str, cwd: Path | None = None, stdin=subprocess.DEVNULL
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(root, *args), capture_output=True, text=True, timeout=240, stdin=stdin,
            **self.kw(cwd or self.ws),
        )  # fmt: skip

    def krate(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([KRATE, *args], capture_output=True, text=True, **self.kw(self.ws))

    def last_run(self) -> dict:
        out = self.krate("runs", "show", "last", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture(scope="module")
def vmbox():
    b = VmBox(None)
    yield b
    shutil.rmtree(b.base, ignore_errors=True)


@pytest.fixture(scope="module")
def user_vmbox(ordinary_user):
    if ordinary_user is None:
        pytest.skip("the ordinary-user variant needs root to create the user")
    b = VmBox(ordinary_user)
    yield b
    shutil.rmtree(b.base, ignore_errors=True)


ATTACK = "; ".join(
    [
        "echo to-stdout",
        "echo to-stderr >&2",
        "echo written > /work/from-guest",
        # the image root: the throwaway layer takes the write, the host's file stays
        "echo changed > /etc/hello && cat /etc/hello",
        # the root share itself: the guest's root leaves the chroot, remounts it read-write
        # (the guest kernel allows that) and writes: QEMU refuses on the host
        'chroot /proc/1/root /bin/sh -c "mount -o remount,rw /lower && echo remount=\\$? '
        '&& echo pwned > /lower/etc/hello; echo direct=\\$?"',
        # no network device at all, and nothing answers on the host's side
        "cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '",
        "nc -w 2 10.0.2.2 22 </dev/null; echo nc=$?",
        "exit 3",
    ]
)


def check_attack(box: VmBox, root: Path, out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 3, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "to-stdout" and "to-stderr" in out.stderr
    assert "changed" in lines  # written in the guest's throwaway layer
    assert (root / "etc" / "hello").read_text() == "from the image\n"  # not on the host
    assert "remount=0" in lines and "direct=1" in lines, out.stdout
    assert "Read-only file system" in out.stderr
    assert "lo" in lines and not any("eth" in line for line in lines)
    assert "nc=1" in lines
    written = box.ws / "from-guest"
    assert written.read_text() == "written\n"
    owner = pwd.getpwnam(box.user).pw_uid if box.user else os.geteuid()
    assert written.stat().st_uid == owner
    # krate's data folder stays private (the guest's cache included), as `krate doctor` checks
    for path in (box.home / "k").rglob("*"):
        assert path.is_symlink() or not path.lstat().st_mode & 0o077, path
    shown = box.last_run()
    assert shown["backend"] in ("qemu-tcg", "qemu-kvm")
    assert shown["exit_code"] == 3 and shown["status"] == "finished"


def test_workspace_written_image_root_kept_no_network_status_passed(vmbox, image_root):
    out = vmbox.run(image_root, "--policy", "strict", "--", "sh", "-c", ATTACK)
    check_attack(vmbox, image_root, out)
    assert "emulated (TCG)" in out.stderr or vmbox.last_run()["backend"] == "qemu-kvm"


def test_as_the_workspace_owner(user_vmbox, image_root):
    out = user_vmbox.run(image_root, "--policy", "strict", "--", "sh", "-c", ATTACK)
    check_attack(user_vmbox, image_root, out)


def test_not_found_and_signal_statuses(vmbox, image_root):
    out = vmbox.run(image_root, "--policy", "strict", "--", "no-such-command")
    assert out.returncode == 127, out.stderr
    held, writer = os.pipe()  # stdin a pipe nobody closes: the run must end all the same
    try:
        out = vmbox.run(image_root, "--policy", "strict", "--", "sh", "-c", "kill -TERM $$",
                        stdin=held)  # fmt: skip
    finally:
        os.close(held), os.close(writer)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr
    assert vmbox.last_run()["exit_code"] == 143


def test_egress_allowed_reached_denied_refused_both_recorded(vmbox, image_root):
    server = Server()
    try:
        p = server.port
        script = (
            f"wget -q -O - http://localhost:{p}/some/path && "
            "! wget -q -O - http://example.com/ && "
            f"! nc -w 2 10.0.2.2 {p} </dev/null && echo done"
        )
        out = vmbox.run(
            image_root, "--policy", "strict", "--allow-host", f"localhost:{p}", "--",
            "sh", "-c", script,
        )  # fmt: skip
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"hello from {p}", "done"]
    shown = vmbox.last_run()
    verdicts = {(h["host"], h["verdict"]) for h in shown["hosts"]}
    assert verdicts == {("localhost", "allow"), ("example.com", "deny")}, shown["hosts"]
    assert "some/path" not in json.dumps(shown["decisions"])


def test_sigkill_of_krate_takes_qemu_down(vmbox, image_root):
    ws = vmbox.fresh_ws("killed")
    proc = subprocess.Popen(
        vmbox.argv(image_root, "--policy", "strict", "--", "sh", "-c",
                   "touch /work/started; sleep 600"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **vmbox.kw(ws),
    )  # fmt: skip
    try:
        wait_for(lambda: (ws / "started").exists(), timeout=180, what="the workload")
        tree = _descendants(proc.pid)
        qemu = [pid for pid in tree if Path(f"/proc/{pid}/comm").read_text().startswith("qemu")]
        assert qemu, tree  # QEMU runs inside bubblewrap, below krate
        if os.geteuid() == 0:  # its own namespaces; the host's home folders are not there
            for ns in ("mnt", "net", "pid", "user"):
                assert os.readlink(f"/proc/{qemu[0]}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
            assert not {"home", "root"} & set(os.listdir(f"/proc/{qemu[0]}/root"))
        proc.kill()
        proc.wait()
        wait_for(lambda: not _alive(qemu[0]), timeout=10, what="QEMU to die with krate")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_signal_to_krate_reaches_the_workload_in_the_guest(vmbox, image_root):
    ws = vmbox.fresh_ws("signalled")
    script = "trap 'echo got-term; exit 7' TERM; touch /work/ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        vmbox.argv(image_root, "--policy", "strict", "--", "sh", "-c", script),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **vmbox.kw(ws),
    )  # fmt: skip
    try:
        wait_for(lambda: (ws / "ready").exists(), timeout=180, what="the workload")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 7, err  # the workload's own handler ran and chose its status
    assert out == "got-term\n"
    shown = vmbox.last_run()
    assert shown["exit_code"] == 7 and shown["status"] == "finished"


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            kids = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_git_workspace_is_refused_before_anything_boots(vmbox, image_root):
    """git's own files are read-only in a workspace; the VM shares it whole and writable."""
    ws = vmbox.fresh_ws("gitws")
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / ".git" / "config").write_text("[core]\n")
    out = subprocess.run(
        vmbox.argv(image_root, "--policy", "strict", "--", "sh", "-c", "echo ran > /work/ran"),
        capture_output=True, text=True, timeout=120, **vmbox.kw(ws),
    )  # fmt: skip
    assert out.returncode == 125, out.stderr
    assert "read-only inside the workspace" in out.stderr
    assert not (ws / "ran").exists()
    shown = vmbox.last_run()
    assert shown["status"] == "failed" and "read-only inside the workspace" in shown["reason"]


def test_an_image_runs_in_the_vm_and_the_record_names_it(image_root):
    """`krate run --vm IMAGE -- CMD`: the imported image's root is the guest's, its user and
    environment apply, the workspace is /work, and the record names image and backend."""
    box = VmBox(None)  # its own home: the unpacked root lives under it
    try:
        imported = box.krate("image", "import", str(image_root), "--ref", "vmtest:1", "--json")
        assert imported.returncode == 0, imported.stderr
        [image] = json.loads(imported.stdout)
        config = image["config_digest"]
        as_root = ["--as-root"] if os.geteuid() == 0 else []
        script = "cat /etc/hello; echo from-vm > /work/img-out; pwd; exit 5"
        out = subprocess.run(
            [KRATE, "run", "--vm", *as_root, "--policy", "strict", "vmtest:1", "--",
             "sh", "-c", script],
            capture_output=True, text=True, timeout=240, **box.kw(box.ws),
        )  # fmt: skip
        assert out.returncode == 5, out.stderr
        assert out.stdout.splitlines() == ["from the image", "/work"]
        assert (box.ws / "img-out").read_text() == "from-vm\n"
        shown = box.last_run()
        assert shown["backend"] in ("qemu-tcg", "qemu-kvm")
        assert shown["image"]["config"] == config and shown["image"]["ref"] == "vmtest:1"
        # `run` never pulls, with --vm too: a missing image is 125 and names the pull command
        out = subprocess.run(
            [KRATE, "run", "--vm", *as_root, "nosuch:1", "--", "true"],
            capture_output=True, text=True, timeout=60, **box.kw(box.ws),
        )  # fmt: skip
        assert out.returncode == 125 and "krate image pull nosuch:1" in out.stderr
    finally:
        shutil.rmtree(box.base, ignore_errors=True)


def _pipe_fds(pid: int) -> dict[int, tuple[str, int]]:
    """{fd: (pipe:[inode], access mode)} for the pipes process `pid` holds."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            info = Path(f"/proc/{pid}/fdinfo/{name}").read_text()
        except OSError:
            continue
        if link.startswith("pipe:"):
            flags = next(
                int(v, 8)
                for k, _, v in (line.partition(":") for line in info.splitlines())
                if k == "flags"
            )
            found[int(name)] = (link, flags & os.O_ACCMODE)
    return found


def test_stdin_reaches_the_guest_whole_with_its_end_and_qemu_gets_only_a_read_end(
    vmbox, image_root
):
    """`producer | krate run --vm`: the bytes arrive intact (4 MB), /dev/stdin opens again,
    the end of input is an end of file in the guest. QEMU holds neither krate's stdin nor
    any write end of the pipe it reads: krate alone feeds it, the guest gets the bytes only."""
    ws = vmbox.fresh_ws("stdin")
    data = os.urandom(4 << 20)
    script = (
        'read first; echo "first=$first"; touch /work/reading; '
        "sha256sum /dev/stdin; wc -c < /dev/stdin; exit 6"
    )
    theirs, ours = os.pipe()
    proc = subprocess.Popen(
        vmbox.argv(image_root, "--policy", "strict", "--", "sh", "-c", script),
        stdin=theirs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **vmbox.kw(ws),
    )  # fmt: skip
    os.close(theirs)
    krate_stdin = f"pipe:[{os.fstat(ours).st_ino}]"
    try:
        os.write(ours, b"hello\n")
        wait_for(lambda: (ws / "reading").exists(), timeout=180, what="the workload")
        [qemu] = [p for p in _descendants(proc.pid)
                  if Path(f"/proc/{p}/comm").read_text().startswith("qemu")]  # fmt: skip
        qemu_pipes = _pipe_fds(qemu)
        assert krate_stdin not in {link for link, _ in qemu_pipes.values()}, qemu_pipes
        fed, mode = qemu_pipes[0]  # QEMU's stdin: a pipe of krate's, read-only
        assert mode == os.O_RDONLY
        assert all(m == os.O_RDONLY for link, m in qemu_pipes.values() if link == fed)
        assert os.readlink(f"/proc/{qemu}/fd/1") == "/dev/null"  # the port's other direction
        writers = [m for link, m in _pipe_fds(proc.pid).values() if link == fed]
        assert writers == [os.O_WRONLY]  # krate holds the only write end
        with os.fdopen(ours, "wb") as producer:
            ours = -1
            producer.write(data)
        out, err = proc.communicate(timeout=240)
    finally:
        if ours >= 0:
            os.close(ours)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 6, err
    digest = hashlib.sha256(data).hexdigest()
    assert out.decode().splitlines() == ["first=hello", f"{digest}  /dev/stdin", "0"]


def test_stdin_from_a_file_as_the_workspace_owner_partly_read(user_vmbox, image_root):
    """`krate run --vm ... < file`: the file's bytes; a workload that stops reading after a
    line and 1000 bytes of 3 MB ends the run (krate's feeding does not hold it up)."""
    source = user_vmbox.base / "input"
    source.write_bytes(b"line one\n" + os.urandom(3 << 20))
    with open(source, "rb") as f:
        out = user_vmbox.run(
            image_root, "--policy", "strict", "--", "sh", "-c",
            'read l; echo "got=$l"; head -c 1000 | wc -c; exit 4', stdin=f,
        )  # fmt: skip
    assert out.returncode == 4, out.stderr
    assert out.stdout.splitlines() == ["got=line one", "1000"]
    shown = user_vmbox.last_run()
    assert shown["exit_code"] == 4 and shown["status"] == "finished"


TYPED = (
    "test -t 0 && echo in-tty; test -t 1 && echo out-tty; stty size; "
    'read x; echo "got $x"; i=0; '
    'while test "$(stty size)" != "40 120" && test $i -lt 300; do sleep 0.1; i=$((i + 1)); done; '
    "stty size; "
    "trap 'echo got-INT' INT; echo ready; sleep 30; echo after-sleep; sleep 120; echo never"
)


def test_on_a_terminal_the_guest_has_one_keys_raw_and_an_emergency_exit(
    vmbox, image_root, terminals
):
    """krate on a terminal: the workload's stdin and stdout are a terminal of the host's size;
    a typed line is echoed and read; a resized window resizes it; Ctrl-C is a byte (the
    guest's terminal signals the workload, krate keeps running); three Ctrl-] kill the VM
    (130, recorded) and the host's terminal gets its modes back."""
    term = Terminal(
        vmbox.argv(image_root, "--policy", "strict", "--", "sh", "-c", TYPED),
        env=vmbox.env(), cwd=vmbox.ws, rows=33, cols=101,
    )  # fmt: skip
    terminals.append(term)
    before = term.modes()
    at = term.expect(rb"in-tty\r\nout-tty\r\n33 101\r\n", timeout=180)
    term.send(b"hello there\r")
    at = term.expect(rb"hello there\r\ngot hello there\r\n", at)
    term.resize(40, 120)  # the window resized: SIGWINCH to krate, the new size to the guest
    at = term.expect(rb"40 120\r\nready\r\n", at)
    raw = term.modes()
    assert raw != before  # raw while the run goes: the host's terminal does not echo
    term.send(b"\x03")  # a byte: the guest's terminal sends SIGINT to the workload
    at = term.expect(rb"got-INT\r\nafter-sleep\r\n", at)
    assert term.proc.poll() is None  # krate itself got no SIGINT
    term.send(b"\x1d\x1d\x1d")
    assert term.wait(timeout=60) == 130
    assert b"Ctrl-] three times" in term.out[at:] and b"never" not in term.out
    assert term.modes() == before
    shown = vmbox.last_run()
    assert shown["exit_code"] == 130 and shown["status"] == "interrupted"
