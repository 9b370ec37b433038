"""`--vm` on macOS: Apple's `container` CLI (Virtualization.framework), driven by its CLI.

Its XPC API is Swift-only, so krate drives the `container` command (homebrew-core
formula `container`; macOS 26 on Apple silicon). Never run on a Mac by this
project yet: the commands below are built from its documented flags
(../shared/research/images-and-microvms.md) and unit-tested against them; a Mac
maintainer runs scripts/macos-smoke's `--vm` section.

- Image hand-over, offline: `container image load --input ARCHIVE` with an OCI
  archive written from krate's own store, so `container` never pulls.
- Run: `container run --rm --network none --read-only --mount
  type=bind,source=WS,target=/work ... IMAGE CMD`, the run's limits as `--memory`
  and `--cpus`, the run's environment as `--env` (names and values go on the
  command line of a process the user owns; a later version should use
  `--env-file` in the run's private folder), `--cidfile` to learn whether the
  container was created at all.
- Exit status: `container run` propagates the workload's status. When no
  container id was written, `container` itself failed before the workload: 125.
- Refused (125) with the reason: macOS before 26 or an Intel Mac (smolvm/libkrun
  on 14/15 is not supported yet), `container` not installed, and a run with
  network: the VM cannot reach krate's egress proxy yet (no socket hand-over).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from krate.errors import EXIT_KRATE_FAILED, KrateError

CANDIDATES = ("/opt/homebrew/bin/container", "/usr/local/bin/container")
MIN_MACOS = 26
INSTALL = "`brew install container`, then `container system start --disable-kernel-install`"
REFUSE_OLD = (
    "--vm on macOS needs macOS {min} or later on Apple silicon with Apple's `container` "
    "(this Mac: macOS {version}, {machine}); macOS 14 and 15 have no supported engine yet"
)


class Plan(NamedTuple):
    exe: str
    image: str  # the image reference after `image load`
    argv: tuple[str, ...]
    workspace: str
    workdir: str = "/work"
    env: Mapping[str, str] = {}
    user: str | None = None  # "UID:GID"
    memory_mb: int | None = None
    cpus: int | None = None
    network: bool = False
    interactive: bool = False
    tty: bool = False
    cidfile: str | None = None


def executable() -> str | None:
    """Homebrew's `container` at its fixed places (a planted one on PATH is not used)."""
    for candidate in CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def supported(version: str, machine: str) -> bool:
    """Whether this macOS release and CPU can run `container` (26+, Apple silicon)."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return False
    return major >= MIN_MACOS and machine == "arm64"


def status() -> list:
    from krate.sandbox.vm import Part

    version, machine = platform.mac_ver()[0], platform.machine()
    ok = supported(version, machine)
    return [
        Part("macOS 26 on Apple silicon", f"macOS {version} {machine}" if ok else None,
             REFUSE_OLD.format(min=MIN_MACOS, version=version or "?", machine=machine)),
        Part("container", executable(), INSTALL),
    ]  # fmt: skip


def load_command(exe: str, archive: Path) -> list[str]:
    """Hand an image from krate's store to `container`, offline."""
    return [exe, "image", "load", "--input", str(archive)]


def run_command(plan: Plan) -> list[str]:
    argv = [plan.exe, "run", "--rm", "--read-only"]
    argv += ["--network", "default" if plan.network else "none"]
    argv += ["--mount", f"type=bind,source={plan.workspace},target=/work"]
    argv += ["--workdir", plan.workdir]
    if plan.user:
        argv += ["--user", plan.user]
    if plan.memory_mb:
        argv += ["--memory", f"{plan.memory_mb}M"]
    if plan.cpus:
        argv += ["--cpus", str(plan.cpus)]
    if plan.interactive:
        argv.append("--interactive")
    if plan.tty:
        argv.append("--tty")
    if plan.cidfile:
        argv += ["--cidfile", plan.cidfile]
    for name, value in plan.env.items():
        argv += ["--env", f"{name}={value}"]
    return [*argv, plan.image, *plan.argv]


def exit_status(returncode: int, created: bool) -> int | None:
    """The workload's status (128+N for a signal), or None when `container` failed before
    creating the container (no id written): the run is then 125."""
    if not created:
        return None
    return 128 - returncode if returncode < 0 else returncode


def refuse_network(network: bool) -> None:
    if network:
        raise KrateError(
            "--vm on macOS cannot reach krate's egress proxy yet; run with --no-network "
            "(or --policy strict) or without --vm",
            exit_code=EXIT_KRATE_FAILED,
        )


def choose(rootfs: Path | None, version: str | None = None, machine: str | None = None):
    """The macOS micro-VM backend, or KrateError 125 naming what is missing."""
    version = platform.mac_ver()[0] if version is None else version
    machine = machine or platform.machine()
    if not supported(version, machine):
        raise KrateError(
            REFUSE_OLD.format(min=MIN_MACOS, version=version or "?", machine=machine),
            exit_code=EXIT_KRATE_FAILED,
        )
    if executable() is None:
        raise KrateError(
            f"--vm on macOS needs Apple's `container`: {INSTALL}", exit_code=EXIT_KRATE_FAILED
        )
    raise KrateError(
        "--vm on macOS runs images, not folders: it needs `krate run --vm IMAGE` (the images "
        "issue); --rootfs works on Linux only",
        exit_code=EXIT_KRATE_FAILED,
    )


def workdir(cwd: str, workspace: str) -> str:
    from krate.sandbox.vm_run import guest_cwd

    return guest_cwd(cwd, workspace)


def env_args(env: Mapping[str, str], drop: Sequence[str] = ("PATH", "HOME", "TMPDIR")) -> dict:
    """The run's environment for the container: host folders' variables left to the image."""
    return {k: v for k, v in env.items() if k not in drop}
