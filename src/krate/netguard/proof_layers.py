"""The proof's layers of evidence, each checked from what the commands' runs left.

Every function returns one layer's JSON: `checked` (could it be checked here),
`agrees` (does the evidence support the claim), what it saw, and `cannot_show`
(what this kind of evidence cannot support). The commands are run by
proof_run.py; proof.py orders the layers and gives the verdict.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krate.netguard import bytecode, guard, lockdown, observer

if TYPE_CHECKING:
    from krate.netguard.guard import Violation

Layer = dict[str, Any]  # one layer's JSON
Row = dict[str, Any]  # one command's result (proof_run.run_one)

CHILD_PROBE = (
    "import ctypes, errno, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "fd = libc.socket(2, 2, 0)\n"
    "if fd >= 0:\n"
    "    os.close(fd); print('allowed')\n"
    "else:\n"
    "    print('refused', errno.errorcode.get(ctypes.get_errno(), '?'))\n"
)
GUARD_CONTROL = (
    "import socket, sys\n"
    "from krate.netguard import guard\n"
    "guard.install()\n"
    "try:\n"
    "    socket.getaddrinfo('krate-prove.invalid', 443)\n"
    "except PermissionError:\n"
    "    pass\n"
    "v = guard.violations()\n"
    "print(len(v), v[0].event if v else '', v[0].file if v else '', v[0].line if v else '')\n"
)


def kernel_layer(python: str) -> Layer:
    here = lockdown.state(run_probe=True)
    layer: dict[str, Any] = {"this_process": here, "child_probe": None}
    if not here["enforced"]:
        layer.update(
            checked=False,
            agrees=False,
            why=f"no lockdown in this process: {here.get('reason') or 'unknown'}",
        )
        return layer
    try:
        done = subprocess.run(
            [python, "-I", "-S", "-c", CHILD_PROBE], capture_output=True, text=True, timeout=60
        )
        words = done.stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        words = ["error", str(exc)]
    layer["child_probe"] = {
        "result": words[0] if words else "error",
        "errno": words[1] if len(words) > 1 else None,
    }
    layer["checked"] = True
    layer["agrees"] = layer["child_probe"]["result"] == "refused"
    layer["cannot_show"] = (
        "anything before the lockdown is applied (interpreter start-up, .pth files); traffic over "
        "Unix sockets to local daemons"
    )
    return layer


def lockdown_per_command(kernel: Layer, results: list[Row], strace: str | None) -> None:
    """With strace, each command must be seen applying its own lockdown (not only inheriting)."""
    if not strace or not kernel.get("checked"):
        kernel["per_command"] = "not checked (needs strace)"
        return
    missing = [r["command"] for r in results if r["expect_lockdown"] and not r["lockdown_applied"]]
    kernel["per_command"] = {
        "applied_own_lockdown": sum(1 for r in results if r["lockdown_applied"]),
        "missing": missing,
    }
    if missing:
        kernel["agrees"] = False


def startup_layer(results: list[Row], strace: str | None, early: str | None = None) -> Layer:
    """No third-party code before any lockdown; nothing started before it outlives it.

    Checked only when the real run and build each ran their workload (the file it
    writes, the store's record) and locked down: a krate whose sandbox failed
    before the workload started says nothing about a real run. `early` says why
    the real runs were not started before the prove command's own lockdown.
    """
    if not strace:
        return {"checked": False, "agrees": False, "why": "needs strace to see what ran when"}
    code, outlived, before_entry = [], [], set()
    real = {}
    for r in results:
        s = r.get("startup") or {}
        code += [{"command": r["command"], **c} for c in s.get("third_party_while_unlocked", [])]
        outlived += [{"command": r["command"], **o} for o in s.get("outlived_lockdown", [])]
        before_entry.update(s.get("before_entry_point", []))
        if r["mode"] == "real":
            real[r["command"]] = {
                "exit_code": r["exit_code"],
                "locked_down": s.get("locked_down"),
                "helpers": s.get("helpers", []),
                "children_before_lockdown": s.get("children_before_lockdown", []),
                "workload": r.get("workload") or {"ran": False, "why": "no evidence was read"},
            }
    exercised = bool(real) and all(
        v["exit_code"] == 0 and v["locked_down"] and v["workload"]["ran"] for v in real.values()
    )
    layer = {
        "checked": exercised,
        "agrees": exercised and not code and not outlived,
        "real_runs": real,
        "third_party_while_unlocked": code,
        "outlived_lockdown": outlived,
        "before_entry_point": sorted(before_entry),
        "cannot_show": (
            "code that the Python environment runs before krate's entry point (listed under "
            "before_entry_point); what a process does without opening a file"
        ),
    }
    if early:
        layer["real_runs_started"] = f"during the proof, not before its lockdown ({early})"
    if not exercised:
        why = [
            f"{name}: {_not_exercised(v)}"
            for name, v in sorted(real.items())
            if not (v["exit_code"] == 0 and v["locked_down"] and v["workload"]["ran"])
        ]
        layer["why"] = "the real run and build did not both run their workload and lock down" + (
            f" ({'; '.join(why)})" if why else ""
        )
    return layer


def _not_exercised(run: dict[str, Any]) -> str:
    if not run["workload"]["ran"]:
        return run["workload"].get("why") or "its workload did not run"
    return f"exit {run['exit_code']}, locked down: {run['locked_down']}"


def bytecode_layer(
    results: list[Row], helpers_layer: Layer, package_dir: Path, strace: str | None
) -> Layer:
    """Every cached .pyc that ran unlocked (or in a helper), and all of krate's, vs its source."""
    import importlib.util

    files = {str(p) for p in package_dir.rglob("__pycache__/*.pyc")}
    for r in results:
        files.update((r.get("startup") or {}).get("bytecode", []))
    for helper in helpers_layer.get("helpers", {}).values():
        for source in helper.get("files", []):
            if source.endswith(".py"):
                files.add(importlib.util.cache_from_source(source))
    if not strace:  # what this process loaded stands in for what the commands did
        for module in list(sys.modules.values()):
            cached = getattr(module, "__cached__", None)
            if isinstance(cached, str):
                files.add(cached)
    files = {f for f in files if os.path.exists(f)}
    result = bytecode.check(files)
    return {
        "checked": True,
        "agrees": result["ok"],
        "source": "files strace saw opened" if strace else "krate's and this process's modules",
        **result,
        "cannot_show": (
            "bytecode that replaced its source too (RECORD covers installed sources); "
            "code that never came from a .pyc file (C extensions: RECORD covers them)"
        ),
    }


def guard_control(python: str, environ: Mapping[str, str], cwd: Path) -> Layer:
    """The guard refuses and attributes a lookup (so "zero attempts" is not a blind spot)."""
    try:
        done = subprocess.run(
            [python, "-I", "-c", GUARD_CONTROL], capture_output=True, text=True, timeout=60, cwd=cwd
        )
        parts = done.stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        parts = []
    ok = len(parts) == 4 and parts[0] == "1" and parts[1] == "socket.getaddrinfo"
    return {
        "refused_and_attributed": ok,
        "seen": f"{parts[1]} at {parts[2]}:{parts[3]}" if ok else " ".join(parts) or "nothing",
    }


def guard_layer(results: list[Row], own: list[Violation], control: Layer) -> Layer:
    total = sum(r["guard_violations"] for r in results) + len(own)
    return {
        "checked": guard.installed() and control["refused_and_attributed"],
        "agrees": total == 0,
        "installed_in_this_process": guard.installed(),
        "attempts": total,
        "attempts_in_this_process": [v.to_dict() for v in own],
        "positive_control": control,
        "cannot_show": (
            "ctypes calls, C extensions and child processes raise no audit event, and code that "
            "wants to can disable the hook: the kernel and observer layers cover those"
        ),
    }


def os_layer(
    results: list[Row], strace: str | None, bwrap: str | None, seatbelt: str | None = None
) -> Layer:
    parts = []
    if strace:
        parts.append("strace -f")
    if bwrap:
        parts.append("empty network namespace (bwrap --unshare-net)")
    if seatbelt:
        parts.append("deny-network Seatbelt profile (sandbox-exec)")
    if not parts:
        why = (
            "neither strace nor bwrap is usable here"
            if sys.platform.startswith("linux")
            else (f"no outside observer implemented for {sys.platform}")
        )
        return {"checked": False, "agrees": False, "observer": None, "why": why}
    attempts = [
        {"command": r["command"], **a}
        for r in results
        if r["observed"]
        for a in r["observed"]["attempts"]
    ]
    layer = {
        "checked": True,
        "agrees": not attempts,
        "observer": " + ".join(parts),
        "inet_syscalls": len(attempts),
        "attempts": attempts,
        "classification": max(
            (r["observed"]["classification"] for r in results if r["observed"]),
            key=lambda c: observer._RANK[c],
            default="none" if strace else "not observed",
        ),
        "cannot_show": (
            "traffic over Unix sockets to local daemons; with only the namespace (no strace), "
            "attempts are prevented but not seen"
        ),
    }
    if not strace:
        layer["checked"] = False
        layer["why"] = "no syscall observer here: the sandbox enforces but shows no attempts"
    return layer
