"""Host kernel settings under /proc: the workload can read them but never write them.

bubblewrap covers /proc/sys and its neighbours read-only only when it does not
unshare the user namespace; krate always does, and as root the sandbox's uid is
host uid 0, which passes the kernel's uid check on sysctl writes. These attack
for real, as root and as the ordinary user, and put back anything that changed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from krate.sandbox.bwrap import PROC_MASKED, PROC_READ_ONLY

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

BURST = Path("/proc/sys/kernel/printk_ratelimit_burst")
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")

# Opens each file for writing and writes nothing: harmless even where it succeeds.
OPEN_FOR_WRITING = """
import os, sys
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_WRONLY))
        print("OPENED", path)
    except OSError as exc:
        print(exc.errno, path)
"""


@pytest.fixture
def burst():
    """The host's printk_ratelimit_burst, put back after the test whatever happened."""
    before = BURST.read_text()
    yield int(before)
    if BURST.read_text() != before and os.geteuid() == 0:
        BURST.write_text(before)


def test_a_sysctl_write_fails_and_the_host_value_is_unchanged(box, burst):
    out = box.sh(f"echo {burst + 1} > {BURST} && echo WROTE; cat {BURST}", "--no-network")
    assert BURST.read_text() == f"{burst}\n"
    assert "WROTE" not in out.stdout
    assert out.stdout.endswith(f"{burst}\n")  # reading still works
    assert "Read-only file system" in out.stderr or "Permission denied" in out.stderr


def test_core_pattern_and_every_kernel_knob_refuse_writing(box):
    before = CORE_PATTERN.read_text()
    # The same value back: harmless if it went through, and it must not.
    out = box.sh(f"cat {CORE_PATTERN} > /tmp/cp; cat /tmp/cp > {CORE_PATTERN} && echo WROTE")
    assert "WROTE" not in out.stdout
    assert "Read-only file system" in out.stderr or "Permission denied" in out.stderr
    assert CORE_PATTERN.read_text() == before
    knobs = [k for k in map(_a_writable_file, PROC_READ_ONLY) if k is not None]
    assert str(BURST) not in knobs and len(knobs) >= 2, knobs
    out = box.krate("run", "--", "python3", "-c", OPEN_FOR_WRITING, str(BURST), *knobs)
    assert out.returncode == 0, out.stderr
    results = dict(line.split(" ", 1)[::-1] for line in out.stdout.splitlines())
    assert set(results) == {str(BURST), *knobs}
    refused = {str(errno.EROFS), str(errno.EACCES)}
    assert all(code in refused for code in results.values()), results


def _a_writable_file(path: str) -> str | None:
    """`path` itself, or a file under it whose mode allows its owner to write."""
    if os.path.isfile(path):
        return path
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                if os.stat(full).st_mode & 0o200:
                    return full
            except OSError:
                continue
    return None


def test_leak_files_read_empty_and_ordinary_programs_work(box):
    present = [p for p in PROC_MASKED if os.path.exists(p)]
    assert present, "no masked /proc file on this kernel: the test proves nothing"
    sizes = " ".join(f"$(wc -c < {p})" for p in present)
    script = (
        f"echo sizes {sizes}; ps -e -o pid= | wc -l; python3 -c 'print(6 * 7)'; "
        "grep -c . /proc/self/status; cat /proc/sys/kernel/ostype"
    )
    out = box.sh(script, "--no-network")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "sizes" + " 0" * len(present)
    assert int(lines[1]) >= 2 and lines[2] == "42" and int(lines[3]) > 10
    assert lines[4] == "Linux"
