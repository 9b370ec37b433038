"""`limits.memory_mb` for real: a cgroup around the whole sandbox, or a refused run.

The attacks are the ones an rlimit let through: files in the sandbox's tmpfs and a
shared mapping, 300 MiB each against a 64 MiB limit. As root on this machine a
cgroup is available (a v1 memory hierarchy writable by root); an ordinary user has
none delegated, so the run must be refused, not run unlimited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .run_support import Box

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

LIMIT_MB = 64
FILL_TMPFS = (
    "dd if=/dev/zero of=/tmp/fill bs=1M count=300 2>/dev/null; echo dd=$?; "
    "du -sm /tmp/fill | cut -f1"
)
FILL_SHARED = (
    "import mmap\n"
    "m = mmap.mmap(-1, 300 << 20, flags=mmap.MAP_SHARED)\n"
    "for i in range(0, 300 << 20, 4096):\n"
    "    m[i] = 1\n"
    "print('filled 300 MiB')\n"
)


def _enforceable(box: Box) -> bool:
    """Whether krate, as this box's user, finds a cgroup it may use."""
    code = "from krate.sandbox import cgroup; print(cgroup.find() is not None)"
    kw = {"user": box.user, "extra_groups": []} if box.user else {}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, **kw
    )
    return out.stdout.strip() == "True"


def _policy(box: Box) -> Path:
    path = box.ws / "limits.toml"
    path.write_text(f"[limits]\nmemory_mb = {LIMIT_MB}\n")
    path.chmod(0o644)
    return path


def _krate_cgroups() -> list[str]:
    from krate.sandbox import cgroup

    place = cgroup.find()
    if place is None:
        return []
    return [p.name for p in place.parent.iterdir() if p.name.startswith(cgroup.PREFIX)]


def test_memory_limit_holds_for_tmpfs_and_shared_memory_or_the_run_is_refused(box):
    policy = str(_policy(box))
    before = _krate_cgroups()
    if not _enforceable(box):
        marker = box.ws / "ran"
        out = box.krate("run", "--policy", policy, "--", "touch", str(marker))
        assert out.returncode == 125, out.stderr
        assert "limits.memory_mb = 64" in out.stderr and "cannot be enforced" in out.stderr
        assert "remove limits.memory_mb" in out.stderr
        assert not marker.exists()
        run = box.last_run()
        assert run["status"] == "refused" and run["exit_code"] == 125
        assert "cannot be enforced" in run["reason"]
        return
    # files in the sandbox's tmpfs: the tmpfs is no bigger than the limit, and its pages
    # count in the cgroup
    # count in the cgroup: dd fails or the kernel kills a process of the sandbox
    out = box.sh(FILL_TMPFS, "--policy", policy)
    assert "dd=0" not in out.stdout, out.stdout
    assert all(int(w) <= LIMIT_MB for w in out.stdout.split() if w.isdigit()), out.stdout
    run = box.last_run()
    if out.returncode != 0:
        assert out.returncode == 137 and "memory limit of 64 MB reached" in run["reason"], run
    assert any("enforced by a per-run cgroup" in n for n in _notes(box)), _notes(box)
    # a shared mapping: the kernel kills the process, and the record says why
    out = box.krate("run", "--policy", policy, "--", "python3", "-c", FILL_SHARED)
    assert out.returncode == 137 and "filled" not in out.stdout, (out.stdout, out.stderr)
    assert f"memory limit of {LIMIT_MB} MB reached" in out.stderr
    run = box.last_run()
    assert run["exit_code"] == 137 and "memory limit of 64 MB reached" in run["reason"]
    assert run["limits"]["memory_mb"] == LIMIT_MB
    # the per-run cgroups are gone
    assert _krate_cgroups() == before


def _notes(box: Box) -> list[str]:
    started = box.events("run.started")[-1]
    return started["data"]["notes"]


def test_without_a_limit_nothing_changes(box):
    out = box.sh("dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>/dev/null; echo dd=$?")
    assert out.stdout.strip() == "dd=0", out.stderr
    assert not any("cgroup" in n for n in _notes(box))
    assert json.dumps(box.last_run()["limits"]) == json.dumps(
        {"cpu_seconds": None, "memory_mb": None, "processes": None, "wall_seconds": None}
    )
