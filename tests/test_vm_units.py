"""The micro-VM's parts without booting: QEMU's command, the guest's script and archive,
the kernel's modules, refusals, exit statuses, and Apple `container`'s commands."""

from __future__ import annotations

import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from krate.errors import KrateError
from krate.policy.model import Limits
from krate.sandbox import (
    backend_qemu,
    container,
    qemu,
    vm,
    vm_initramfs,
    vm_kernel,
    vm_run,
    vm_stdin,
)
from krate.sandbox.spec import SandboxSpec
from krate.sandbox.supervise import Outcome

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: /proc, busybox")


def plan(**kw) -> qemu.Plan:
    base = dict(
        qemu="qemu-system-x86_64", kernel="/k", initrd="/i", control="/run/in", root="/img",
        workspace="/home/u/proj", status="/run/status", console="/run/console",
        stdout=qemu.Output(fd=5), stderr=qemu.Output(path="/proc/self/fd/2"), tsc_khz=2596142,
    )  # fmt: skip
    base.update(kw)
    return qemu.Plan(**base)


def after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_without_network_there_is_no_network_device_and_qemu_may_not_fork():
    argv = qemu.command(plan())
    assert "-netdev" not in argv and not any("virtio-net" in a for a in argv)
    assert after(argv, "-sandbox") == [
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    ]
    assert after(argv, "-M") == ["microvm,x-option-roms=off"]
    assert after(argv, "-accel") == ["tcg"] and "-cpu" not in argv
    assert "tsc_early_khz=2596142" in after(argv, "-append")[0].split()


def test_root_and_control_are_read_only_on_the_host_the_workspace_is_not():
    fsdev = after(qemu.command(plan()), "-fsdev")
    assert fsdev == [
        "local,id=krate,path=/run/in,security_model=none,readonly=on",
        "local,id=root,path=/img,security_model=none,readonly=on",
        "local,id=ws,path=/home/u/proj,security_model=none",
    ]


def test_commas_in_paths_cannot_add_qemu_options():
    argv = qemu.command(plan(workspace="/w,readonly=off,x", root="/r,path=/"))
    assert "local,id=ws,path=/w,,readonly=off,,x,security_model=none" in argv
    assert "local,id=root,path=/r,,path=/,security_model=none,readonly=on" in argv


def test_stdout_by_fd_set_stderr_by_path_memory_and_kvm():
    argv = qemu.command(plan(memory_mb=512, accel="kvm"))
    assert after(argv, "-add-fd") == ["fd=5,set=1"]
    chardevs = after(argv, "-chardev")
    assert "file,id=stdout,path=/dev/fdset/1,append=on" in chardevs
    assert "file,id=stderr,path=/proc/self/fd/2,append=on" in chardevs
    assert after(argv, "-m") == ["512"] and after(argv, "-cpu") == ["host"]


def test_stdin_is_a_port_read_from_qemus_own_descriptor_0_only_when_asked():
    argv = qemu.command(plan(stdin=True))
    assert "stdio,id=stdin,signal=off" in after(argv, "-chardev")
    assert "virtserialport,chardev=stdin,name=krate.stdin" in after(argv, "-device")
    assert not any("stdio" in c for c in after(qemu.command(plan()), "-chardev"))  # the probe
    on_terminal = after(qemu.command(plan(stdin=True, terminal=True)), "-device")
    assert "virtconsole,chardev=stdin,name=krate.stdin" in on_terminal  # the guest's hvc0


def test_the_emergency_exit_is_three_ctrl_close_brackets_across_reads():
    import threading

    calls: list[int] = []
    for chunks, expected in (
        ([b"a\x1d\x1d\x1db"], 1),
        ([b"\x1d", b"\x1d", b"\x1d"], 1),  # a raw terminal gives one key per read
        ([b"\x1d\x1d", b"x\x1d"], 0),
    ):
        calls.clear()
        reader, writer = os.pipe()
        sink_r, sink_w = os.pipe()
        t = threading.Thread(target=vm_stdin.copy, args=(reader, sink_w, lambda: calls.append(1)))
        t.start()
        for chunk in chunks:  # one read per chunk
            os.write(writer, chunk)
            wait_until_empty(reader)
        os.close(writer)
        t.join(10)
        assert os.read(sink_r, 100) == b"".join(chunks)  # the bytes still reach the guest
        os.close(sink_r), os.close(reader)
        assert len(calls) == expected, chunks


@linux
def test_raw_mode_passes_every_key_and_the_size_is_read():
    import fcntl
    import struct
    import termios

    leader, follower = os.openpty()
    try:
        fcntl.ioctl(leader, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        assert vm_stdin.size(follower) == (33, 101)
        assert not vm_stdin.terminal(follower)  # not krate's own foreground terminal
        vm_stdin.raw(follower)
        iflag, oflag, _, lflag, *_ = termios.tcgetattr(follower)
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)  # Ctrl-C: a byte
        assert not iflag & (termios.ICRNL | termios.IXON) and not oflag & termios.OPOST
        os.write(leader, b"\x03\x1a\r")
        assert os.read(follower, 10) == b"\x03\x1a\r"
    finally:
        os.close(leader), os.close(follower)
    with open(os.devnull) as null:
        assert vm_stdin.size(null.fileno()) == (24, 80)  # not a terminal: the usual size


def wait_until_empty(fd: int) -> None:
    import fcntl
    import struct
    import termios
    import time

    deadline = time.monotonic() + 10
    while struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_stdin_relay_copies_until_the_end_then_closes_and_stops_when_qemu_is_gone(
    tmp_path,
):
    import threading

    source = tmp_path / "in"
    source.write_bytes(os.urandom(3 * vm_stdin.CHUNK + 5))  # more than a pipe holds
    reader, writer = os.pipe()
    got: list[bytes] = []
    drain = threading.Thread(target=lambda: got.append(os.fdopen(reader, "rb").read()))
    drain.start()
    with open(source, "rb") as f:
        vm_stdin.copy(f.fileno(), writer)
    drain.join(10)
    assert got == [source.read_bytes()]  # whole, and the end of file came (writer closed)
    # the reader went away (QEMU exited) with the input still coming: copy ends, no error
    reader, writer = os.pipe()
    os.close(reader)
    with open(source, "rb") as f:
        vm_stdin.copy(f.fileno(), writer)
    with pytest.raises(OSError):
        os.fstat(writer)  # closed by copy


@linux
def test_a_terminal_that_is_not_krates_own_foreground_is_not_read(tmp_path):
    leader, follower = os.openpty()  # not krate's controlling terminal: never read
    try:
        assert not vm_stdin.relayed(follower)
    finally:
        os.close(leader), os.close(follower)
    with open(tmp_path / "f", "wb") as f:
        assert vm_stdin.relayed(f.fileno())
    relay = vm_stdin.Relay(src=os.open(os.devnull, os.O_RDONLY))
    assert os.get_inheritable(relay.reader) is False and os.get_inheritable(relay.writer) is False
    relay.abandon()
    assert relay.reader == relay.writer == -1


def test_network_is_restricted_slirp_whose_only_way_out_is_the_relay():
    relay = qemu.relay_command("/usr/bin/python3", "/k/guestfwd.py", "/tmp/e,x/proxy.sock")
    assert relay == "/usr/bin/python3 -I -S /k/guestfwd.py /tmp/e,x/proxy.sock"
    argv = qemu.command(plan(forwards=((3128, relay), (1080, relay))))
    (netdev,) = after(argv, "-netdev")
    assert netdev.startswith("user,id=net0,restrict=on,")
    assert netdev.count("guestfwd=") == 2
    assert "guestfwd=tcp:10.0.2.100:3128-cmd:/usr/bin/python3 -I -S /k/guestfwd.py " in netdev
    assert "/tmp/e,,x/proxy.sock" in netdev  # the comma cannot start an option
    assert "hostfwd" not in netdev
    assert after(argv, "-sandbox")[0].endswith("spawn=allow,resourcecontrol=deny")


@linux
def test_krates_stdout_reaches_qemu_write_only(tmp_path):
    fds: list[int] = []
    try:
        with open(tmp_path / "f", "w") as w:  # a file krate's caller redirected to
            out = backend_qemu._output(w.fileno(), fds)
            assert out.fd is not None and out.fd >= 3 and out.fd in fds
        with open(tmp_path / "f", "r+") as rw:  # read-write file: reopened by path
            assert backend_qemu._output(rw.fileno(), fds).path == f"/proc/self/fd/{rw.fileno()}"
        leader, follower = os.openpty()  # a terminal, read-write: a write-only copy
        out = backend_qemu._output(follower, fds)
        assert out.fd is not None and os.get_blocking(out.fd) is not None
        import fcntl

        assert fcntl.fcntl(out.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        os.close(leader), os.close(follower)
    finally:
        for fd in fds:
            os.close(fd)


def test_arm64_names_its_machine_console_and_a_64_bit_cpu():
    argv = qemu.command(plan(machine="aarch64", tsc_khz=None))
    assert after(argv, "-M") == ["virt"] and after(argv, "-cpu") == ["max"]
    assert "console=ttyAMA0" in after(argv, "-append")[0]


def test_qemu_runs_in_bubblewrap_seeing_little_of_the_host(tmp_path):
    from krate.sandbox import qemu_confine

    argv = qemu_confine.wrap("/usr/bin/bwrap", ["qemu", "-x"], workspace=tmp_path,
                             read_only=(Path("/tmp/krate-egress-1"),))  # fmt: skip
    assert argv[:6] == ["/usr/bin/bwrap", "--die-with-parent", "--unshare-all",
                        "--new-session", "--cap-drop", "ALL"]  # fmt: skip
    assert argv[-3:] == ["--", "qemu", "-x"]
    binds = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind")]
    assert str(tmp_path) in binds and "/tmp/krate-egress-1" in binds
    assert not any(b in ("/", "/home", "/root", "/etc") for b in binds)
    assert "/dev/kvm" not in argv
    assert "/dev/kvm" in qemu_confine.wrap("b", ["q"], workspace=tmp_path, kvm=True)


def test_tsc_khz_from_cpuinfo():
    assert qemu.tsc_khz("processor\t: 0\ncpu MHz\t\t: 2596.142\n") == 2596142
    assert qemu.tsc_khz("nothing\n") is None


def test_run_script_quotes_everything_and_drops_to_the_image_user(tmp_path):
    argv = ["sh", "-c", "echo 'x' $HOME; exit 3", "a b"]
    text = vm_run.script(argv, {"A": "it's $(x)", "B": "two\nlines"}, "/work/sub dir",
                         vm_run.GuestUser(1000, 1001), cpu_seconds=5, processes=50)  # fmt: skip
    assert "ulimit -t 5 || exit 125" in text and "ulimit -u 50 || exit 125" in text
    assert "nsenter -S 1000 -G 1001" in text.replace(" \\\n  ", " ")
    # the same words come back out of a POSIX shell: nothing was interpreted
    probe = text.split("exec chroot /newroot /.krate/busybox ", 1)[1]
    words = subprocess.run(
        ["sh", "-c", "printf '%s\\0' " + probe.replace("\\\n", "")],
        capture_output=True, check=True,
    ).stdout.split(b"\0")[:-1]  # fmt: skip
    assert [w.decode() for w in words[-len(argv) :]] == argv
    assert b"A=it's $(x)" in words and b"B=two\nlines" in words
    assert b"/work/sub dir" in words


def test_root_runs_without_nsenter_and_cwd_maps_into_work():
    assert "nsenter" not in vm_run.script(["true"], {}, "/work")
    assert vm_run.guest_cwd("/home/u/p/src", "/home/u/p") == "/work/src"
    assert vm_run.guest_cwd("/elsewhere", "/home/u/p") == "/work"
    env = vm_run.guest_env({"PATH": "/host/bin", "HOME": "/home/u", "X": "1"}, None,
                           vm_run.GuestUser())  # fmt: skip
    assert env["PATH"] == vm_run.DEFAULT_PATH and env["HOME"] == "/root" and env["X"] == "1"
    assert vm_run.GuestUser.parse("1000") == (1000, 1000)


@linux
def test_cpio_archive_reads_back_with_busybox(tmp_path):
    out = tmp_path / "a.cpio"
    with open(out, "wb") as f:
        vm_initramfs.write_cpio(f, [("bin", 0o40755, b"", 0), ("bin/x", 0o100755, b"hello", 0),
                                    ("dev/console", 0o20600, b"", os.makedev(5, 1))])  # fmt: skip
    with open(out, "rb") as archive:
        listing = subprocess.run(
            ["busybox", "cpio", "-t", "-v"], stdin=archive, capture_output=True, text=True
        ).stdout
    assert "bin/x" in listing and "dev/console" in listing and "-rwxr-xr-x" in listing


@linux
def test_busybox_must_be_static(tmp_path):
    assert vm_initramfs.is_static(Path("/bin/busybox"))
    assert not vm_initramfs.is_static(Path("/bin/sh"))  # dynamically linked
    assert vm_initramfs.find_busybox(["/bin/sh"]) is None


def fake_module(folder: Path, name: str, depends: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ko").write_bytes(b"\x7fELF junk\x00license=GPL\x00depends=" +
                                        depends.encode() + b"\x00name=x\x00")  # fmt: skip


def test_modules_load_after_their_dependencies_without_modules_dep(tmp_path):
    mods = tmp_path / "lib/modules/6.1.0-9-amd64"
    fake_module(mods / "kernel/fs/9p", "9p", "9pnet,fscache,netfs")
    fake_module(mods / "kernel/net/9p", "9pnet", "")
    fake_module(mods / "kernel/fs/fscache", "fscache", "netfs")
    fake_module(mods / "kernel/fs/netfs", "netfs", "")
    netfs = mods / "kernel/fs/netfs/netfs.ko"  # compressed as Debian 13 ships them
    netfs.with_name("netfs.ko.xz").write_bytes(lzma.compress(netfs.read_bytes()))
    netfs.unlink()
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1.0-9-amd64").write_bytes(b"MZ")
    kernel = vm_kernel.find((tmp_path,))
    assert kernel is not None and kernel.version == "6.1.0-9-amd64"
    order = [n for n, _ in vm_kernel.load_order(kernel, ("9p", "overlay"))]
    assert order == ["9pnet", "netfs", "fscache", "9p"]  # overlay: built in, nothing to load


def test_a_kernel_without_9p_is_not_used(tmp_path):
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1.0-9-cloud-amd64").write_bytes(b"MZ")
    fake_module(tmp_path / "lib/modules/6.1.0-9-cloud-amd64/kernel/fs/netfs", "netfs", "")
    assert vm_kernel.find((tmp_path,)) is None
    assert "apt-get install linux-image-amd64" in vm_kernel.install_hint("x86_64")


def test_the_uncompressed_kernel_is_found_inside_the_image(tmp_path):
    elf = b"\x7fELF" + os.urandom(64)
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"MZ header" + lzma.compress(b"not this") + lzma.compress(elf))
    kernel = vm_kernel.Kernel("v", image, tmp_path)
    out = vm_kernel.vmlinux(kernel, tmp_path / "cache")
    assert out.read_bytes() == elf and out.stat().st_mode & 0o777 == 0o600  # in a data folder
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert vm_kernel.vmlinux(kernel, tmp_path / "cache") == out  # cached by digest


def test_a_root_krate_caches_the_guest_where_the_workspace_owner_can_read_it(tmp_path):
    assert backend_qemu.cache_dir(tmp_path, euid=0) == vm_kernel.SYSTEM_CACHE
    assert backend_qemu.cache_dir(tmp_path, euid=1000) == tmp_path / "cache" / "vm"
    assert vm_kernel.file_mode(vm_kernel.SYSTEM_CACHE) == 0o644


def spec(ws: Path, **kw) -> SandboxSpec:
    base = dict(argv=("true",), cwd=ws, workspace=ws, writable=(ws,), read_only=(), hidden=(),
                env={})  # fmt: skip
    base.update(kw)
    return SandboxSpec(**base)


def test_rules_the_vm_cannot_enforce_refuse_the_run(tmp_path):
    ws, root = tmp_path / "ws", tmp_path / "root"
    ws.mkdir(), root.mkdir()
    root_user, user = vm_run.GuestUser(), vm_run.GuestUser(1000, 1000)
    assert backend_qemu.refuse(spec(ws), root, root_user) is None
    assert "hides" in backend_qemu.refuse(spec(ws, hidden=(ws / ".env",)), root, root_user)
    assert "read-only" in backend_qemu.refuse(
        spec(ws, read_only=(ws / ".git" / "hooks",)), root, root_user
    )
    limited = spec(ws, limits=Limits(processes=10))
    assert "limits.processes" in backend_qemu.refuse(limited, root, root_user)
    assert backend_qemu.refuse(limited, root, user) is None
    assert "below" in backend_qemu.refuse(spec(ws, limits=Limits(memory_mb=32)), root, user)
    assert "image root" in backend_qemu.refuse(spec(ws), tmp_path / "none", user)


def launcher_at(folder: Path) -> backend_qemu.QemuLauncher:
    launcher = backend_qemu.QemuLauncher.__new__(backend_qemu.QemuLauncher)
    launcher.folder, launcher.boot_s, launcher.accel = folder, 90.0, "tcg"
    launcher.timed_boot, launcher.forwarded = False, []
    return launcher


def test_status_port_lines_become_the_outcome(tmp_path):
    launcher = launcher_at(tmp_path)
    (tmp_path / "status").write_text("started\nexit 137\n")
    assert launcher.exit_code(0) == 137
    (tmp_path / "status").write_text("fail cannot mount the workspace\n")
    assert launcher.exit_code(0) is None
    outcome = Outcome(0, "finished")
    launcher.not_started(outcome, 0)
    assert (outcome.exit_code, outcome.status) == (125, "failed")
    assert outcome.reason == "the micro-VM's init failed: cannot mount the workspace"


def test_a_signal_that_ended_qemu_mid_run_is_128_plus_n(tmp_path):
    launcher = launcher_at(tmp_path)
    (tmp_path / "status").write_text("started\n")
    launcher.forwarded = [15]
    outcome = Outcome(0, "finished")
    launcher.not_started(outcome, 0)
    assert (outcome.exit_code, outcome.status) == (143, "interrupted")


def test_the_command_line_needs_vm_and_rootfs_together(cli, tmp_path):
    out = cli("run", "--rootfs", str(tmp_path), "--", "true")
    assert out.code == 2 and "add --vm" in out.err
    out = cli("run", "--vm", "--", "true")
    assert out.code == 2 and "--vm needs an image" in out.err


def test_a_hung_boot_is_125_with_the_console_lines(tmp_path):
    launcher = launcher_at(tmp_path)
    launcher.timed_boot = True
    (tmp_path / "console").write_text("[ 0.1] booting\n\n[ 9.9] stuck in calibration\n")
    outcome = Outcome(0, "finished")
    launcher.not_started(outcome, -9)
    assert outcome.exit_code == 125 and outcome.status == "failed"
    assert "did not boot within 90 s (tcg)" in outcome.reason
    assert outcome.reason.endswith("console: [ 0.1] booting | [ 9.9] stuck in calibration")


def test_vm_options_need_each_other():
    with pytest.raises(KrateError, match="add --vm"):
        vm.choose(False, Path("/"), Path("/tmp"))
    with pytest.raises(KrateError, match="--vm needs an image"):
        vm.choose(True, None, Path("/tmp"))


# ---------------------------------------------------------------- Apple container


def test_container_run_command():
    argv = container.run_command(
        container.Plan(
            exe="/opt/homebrew/bin/container", image="krate/sha256-abc", argv=("npm", "ci"),
            workspace="/Users/me/app", workdir="/work/sub", env={"CI": "1"}, user="501:20",
            memory_mb=512, cpus=2, cidfile="/tmp/run/cid",
        )
    )  # fmt: skip
    assert argv == [
        "/opt/homebrew/bin/container", "run", "--rm", "--read-only", "--network", "none",
        "--mount", "type=bind,source=/Users/me/app,target=/work", "--workdir", "/work/sub",
        "--user", "501:20", "--memory", "512M", "--cpus", "2", "--cidfile", "/tmp/run/cid",
        "--env", "CI=1", "krate/sha256-abc", "npm", "ci",
    ]  # fmt: skip
    assert container.load_command("/c", Path("/s/img.tar")) == [
        "/c",
        "image",
        "load",
        "--input",
        "/s/img.tar",
    ]


def test_container_exit_status_mapping():
    assert container.exit_status(3, created=True) == 3
    assert container.exit_status(-15, created=True) == 143
    assert container.exit_status(1, created=False) is None  # container itself failed: 125


@pytest.mark.parametrize(
    "version,machine,ok",
    [("26.0", "arm64", True), ("26.1.2", "arm64", True), ("15.5", "arm64", False),
     ("26.0", "x86_64", False), ("", "arm64", False)],
)  # fmt: skip
def test_container_needs_macos_26_on_apple_silicon(version, machine, ok):
    assert container.supported(version, machine) is ok
    if not ok:
        with pytest.raises(KrateError, match="macOS 26 or later on Apple silicon") as err:
            container.choose(Path("/"), version, machine)
        assert err.value.exit_code == 125


def test_container_refuses_a_networked_run():
    container.refuse_network(False)
    with pytest.raises(KrateError, match="egress proxy"):
        container.refuse_network(True)
