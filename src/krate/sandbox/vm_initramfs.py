"""The micro-VM's guest side: busybox and a shell-script init in an initramfs, built once.

The guest is small and ours: Debian's static busybox (`busybox-static`), the
kernel modules the shares need (vm_kernel.load_order) and `INIT` below, packed as
an uncompressed cpio "newc" archive (written here with the standard library: the
format is a fixed header per file, and neither `cpio` nor an initramfs tool is
otherwise needed on the host; uncompressed because decompression is slow under
emulation). The archive is cached by the digest of everything in it, in krate's
cache folder (vm_kernel.SYSTEM_CACHE for a root krate: QEMU then runs as the
workspace's owner and opens it).

What INIT does, in order: mount the run's control share (`krate`, read-only) with
`run.sh` (written per run by vm_run.py), the image root (`root`, read-only on the
host: `-fsdev ...,readonly=on`) under a tmpfs overlay, the workspace (`ws`,
read-write) at /work, a minimal /dev, /proc and /tmp; bring up the network when
the run has one (only route: QEMU's guestfwd to krate's egress proxy); then
report `started`, run `run.sh` with stdout and stderr on their own virtio-serial
ports and stdin on a pipe that a feeder (`cat`) fills from a third (or, when
krate's stdin is a terminal, on that third port made a virtio console, /dev/hvc0,
as the workload's controlling terminal, sized as the host's: `setsid -c`, since
Debian's busybox has no `script` to allocate a pty; a watcher
passes on the signals krate appends to the control share's `signals`), and report
`exit N` (128+N for a signal) on the status port before it powers off. A failure
before the workload is reported as `fail REASON`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from krate.sandbox import vm_kernel

BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")
BUSYBOX_HINT = "install Debian's static busybox: `sudo apt-get install busybox-static`"
STATUS_PORT, STDOUT_PORT, STDERR_PORT = "krate.status", "krate.stdout", "krate.stderr"
GUEST_IP, GATEWAY = "10.0.2.15", "10.0.2.2"

INIT = r"""#!/bin/busybox sh
# krate's guest init: see src/krate/sandbox/vm_initramfs.py
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dmesg -n 1
if grep -q krate.probe /proc/cmdline; then echo krate-probe-ok; reboot -f; fi
for m in $(cat /modules/order); do
  insmod /modules/$m.ko || echo "krate-guest: insmod $m failed"
done
port() {
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat $d/name 2>/dev/null)" = "$1" ] && echo /dev/${d##*/} && return
  done
  echo /dev/console
}
STATUS=$(port krate.status)
say() { echo "$*" > "$STATUS"; }
die() { echo "krate-guest: $*"; say "fail $*"; sync; reboot -f; }
P9=trans=virtio,version=9p2000.L,msize=262144
mkdir -p /krate /lower /rw /newroot
mount -t 9p -o $P9,ro krate /krate || die "cannot mount the run's control share"
mount -t 9p -o $P9,ro root /lower || die "cannot mount the image root"
mount -t tmpfs -o mode=0755 rw /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || die "cannot lay the writable layer over the image root"
N=/newroot
mkdir -p $N/work $N/proc $N/dev $N/tmp $N/.krate
mount -t 9p -o $P9 ws $N/work || die "cannot mount the workspace"
mount -t proc proc $N/proc
mount -t tmpfs -o mode=0755,nosuid,noexec dev $N/dev
mknod -m 666 $N/dev/null c 1 3; mknod -m 666 $N/dev/zero c 1 5; mknod -m 666 $N/dev/full c 1 7
mknod -m 666 $N/dev/random c 1 8; mknod -m 666 $N/dev/urandom c 1 9; mknod -m 666 $N/dev/tty c 5 0
mkdir $N/dev/pts $N/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $N/dev/pts && ln -s pts/ptmx $N/dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev shm $N/dev/shm
ln -s /proc/self/fd $N/dev/fd; ln -s /proc/self/fd/0 $N/dev/stdin
ln -s /proc/self/fd/1 $N/dev/stdout; ln -s /proc/self/fd/2 $N/dev/stderr
mount -t tmpfs -o mode=1777,nosuid,nodev tmp $N/tmp
touch $N/.krate/busybox && mount --bind -o ro /bin/busybox $N/.krate/busybox
ip link set lo up
if [ -e /krate/net ]; then
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
    || die "cannot bring up the network to krate's egress proxy"
fi
# stdin: the port allows one open at a time, so the workload reads a pipe a feeder (cat) fills
# (its /dev/stdin opens again, as on the host); the feeder's end of file is the workload's.
# The feeder runs in the background, so a workload that never reads does not hold up init.
STDIN=$(port krate.stdin)
[ "$STDIN" = /dev/console ] && STDIN=/dev/null
# krate on a terminal: that port is a console, /dev/hvc0, the workload's controlling terminal
# (setsid -c), at the host's size; stdout and stderr use it where krate's are the terminal.
TTY=""
if [ -e /krate/tty ]; then
  TTY=/dev/hvc0
  read rows cols tout terr < /krate/tty
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -e $TTY ] && break; sleep 0.1; done
  [ -e $TTY ] || die "the guest has no terminal ($TTY)"
fi
# Signals krate forwards arrive as lines (numbers) appended to /krate/signals; each goes to
# the workload, init's other child. Started first so that the workload stays in the foreground
# (an asynchronous command of a shell without job control would ignore SIGINT and SIGQUIT).
(
  read me rest < /proc/self/stat
  seen=0
  while sleep 0.2; do
    [ -e /krate/signals ] || continue
    work=""
    for kid in $(cat /proc/1/task/1/children); do
      [ "$kid" = "$me" ] || [ "$kid" = "$(cat /feeder 2>/dev/null)" ] || work=$kid
    done
    [ -n "$work" ] || continue
    n=$(wc -l < /krate/signals)
    while [ "$seen" -lt "$n" ]; do
      seen=$((seen + 1))
      line=$(sed -n "${seen}p" /krate/signals)
      case "$line" in
        # a new window size: the guest's kernel sends SIGWINCH to the terminal's foreground
        "w "*) set -- $line; [ -n "$TTY" ] && stty -F $TTY rows "$2" cols "$3" ;;
        *) kill -"$line" "$work" 2>/dev/null ;;
      esac
    done
  done
) &
say started
if [ -n "$TTY" ]; then
  OUT=$TTY; ERR=$TTY
  [ "$tout" = 1 ] || OUT=$(port krate.stdout)
  [ "$terr" = 1 ] || ERR=$(port krate.stderr)
  # the size is set while the terminal is open: its last close forgets it. The last stty
  # waits until the terminal's output has left the guest (TCSADRAIN).
  { stty rows "$rows" cols "$cols"; setsid -c sh /krate/run.sh; status=$?; stty -tostop; } \
    <$TTY >"$OUT" 2>"$ERR"
else
  { cat "$STDIN" & echo $! > /feeder; } \
    | sh /krate/run.sh >"$(port krate.stdout)" 2>"$(port krate.stderr)"
  status=$?
fi
say "exit $status"
sync
reboot -f
"""


def find_busybox(candidates: Iterable[str] = BUSYBOX) -> Path | None:
    """A statically linked busybox (the guest has no libc of its own), or None."""
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and is_static(path):
            return path
    return None


def is_static(path: Path) -> bool:
    """An ELF executable without an interpreter (PT_INTERP): runs without a libc."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        end = "<" if head[5] == 1 else ">"
        phoff, = struct.unpack_from(end + "Q", head, 32)  # fmt: skip
        phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(
        struct.unpack_from(end + "I", table, i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def build(kernel: vm_kernel.Kernel, busybox: Path, cache: Path) -> Path:
    """The initramfs for `kernel` (network modules included), built once and cached."""
    modules = vm_kernel.load_order(kernel, vm_kernel.MODULES + vm_kernel.NET_MODULES)
    files: list[tuple[str, int, bytes]] = [
        ("init", 0o100755, INIT.encode()),
        ("bin/busybox", 0o100755, busybox.read_bytes()),
        ("modules/order", 0o100644, "\n".join(n for n, _ in modules).encode() + b"\n"),
    ]
    files += [
        (f"modules/{name}.ko", 0o100644, vm_kernel.module_bytes(path)) for name, path in modules
    ]
    digest = hashlib.sha256()
    for name, mode, data in files:
        digest.update(f"{name}\0{mode}\0{len(data)}\0".encode())
        digest.update(data)
    target = cache / f"initramfs-{digest.hexdigest()[:32]}.cpio"
    if target.exists():
        return target
    vm_kernel.make_cache(cache)
    entries: list[tuple[str, int, bytes, int]] = [
        (d, 0o40755, b"", 0) for d in ("bin", "dev", "proc", "sys", "modules")
    ]
    entries += [("dev/console", 0o20600, b"", os.makedev(5, 1))]
    entries += [(name, mode, data, 0) for name, mode, data in files]
    tmp = target.with_name(f"{target.name}.{os.getpid()}")
    with open(tmp, "wb") as out:
        write_cpio(out, entries)
    os.chmod(tmp, vm_kernel.file_mode(cache))
    os.replace(tmp, target)
    return target


def write_cpio(out, entries: list[tuple[str, int, bytes, int]]) -> None:
    """A cpio "newc" archive of (name, mode, data, rdev); owner root, mtime 0."""
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        encoded = name.encode() + b"\0"
        fields = (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0,
            os.major(rdev), os.minor(rdev), len(encoded), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        out.write(data + b"\0" * (-len(data) % 4))


def clear(cache: Path) -> None:
    """Remove the cached kernels and initramfs (derived, disposable)."""
    shutil.rmtree(cache, ignore_errors=True)
