"""From an `strace -f` log: what krate's processes loaded and started before their lockdown.

The kernel layer shows that each command locks itself down; this shows *when*,
relative to the code it ran. Every process of the command (krate, its helpers,
the children it starts) is followed with its parent, its program, its own
seccomp call (or the filter it inherited), the files it opened and its exit:

- third-party code opened while unlocked: a `.py`, `.pyc`, `.so` or `.pth` file
  in a site-packages or dist-packages folder, outside krate's own package, opened
  by a process that is not yet locked down. What krate's first process opens
  before its first file of krate (`.pth` files, `sitecustomize`) runs before
  krate exists: listed apart, as the known limit it is.
- helpers (the egress proxy, the registry transport) may open nothing of the sort.
- children started while krate was unlocked that were still alive when it locked
  down: only the sandbox (bwrap and what runs in it) and the helpers may be.
- every bytecode file a process loaded while unlocked, and every one a helper
  loaded, for the bytecode check (bytecode.py).

The sandbox's own processes (bwrap and below) are the workload's: they are
confined by their own namespaces and are not judged here. Parsing only; the
proof runs strace (observer.py).
"""

from __future__ import annotations

import os
import re
from typing import Any

from krate.netguard.observer import _joined_lines

TRACE = (
    "socket,connect,bind,sendto,sendmsg,sendmmsg,io_uring_setup,seccomp,landlock_restrict_self,"
    "execve,openat,open,clone,clone3,fork,vfork,exit_group"
)
_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(.*)$")
_EXIT = re.compile(r"^(\d+)\s+\+\+\+ (exited|killed)")
_RESOLVED = re.compile(r"^<(.*)>")
ROLES = {"proxy": "egress proxy", "transport": "registry transport"}
# The helper scripts, run from source or from their cached bytecode.
_SCRIPT = r"/krate/(?:egress|registry)/(?:__pycache__/)?(proxy|transport)(?:\.[\w-]+)?\.pyc?"
_HELPER_ARGV = re.compile(r'"[^"]*' + _SCRIPT + '"')
_HELPER_OPEN = re.compile(_SCRIPT + "$")
_TRANSLATED = re.compile(r"/\* (\d+) in strace's PID NS \*/")
_CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth")
SITE_DIRS = ("site-packages", "dist-packages")


class _Proc:
    __slots__ = ("pid", "parent", "created", "inherited", "locked", "program", "opens", "exited",
                 "entry", "role")  # fmt: skip

    def __init__(self, pid: int, parent: int | None, created: int, locked: bool) -> None:
        self.pid, self.parent, self.created = pid, parent, created
        self.inherited = self.locked = locked  # a child inherits its parent's filter
        self.program: str | None = None
        self.opens: list[tuple[int, str, bool]] = []  # (line, path, locked then)
        self.exited: int | None = None
        self.entry: int | None = None  # first open of a krate file
        self.role: str | None = None  # a helper, named by its command line


def third_party(path: str, package_dir: str) -> bool:
    parts = path.split(os.sep)
    if not any(d in parts for d in SITE_DIRS):
        return False
    if path.startswith(package_dir.rstrip(os.sep) + os.sep):
        return False
    name = parts[-1]
    return name.endswith(_CODE_SUFFIXES) or ".so." in name


def analyse(log: str, package_dir: str) -> dict[str, Any]:
    """The findings for one command's log (see the module docstring)."""
    lines = list(_joined_lines(log))
    tgid: dict[int, int] = {}  # thread id -> process id
    procs: dict[int, _Proc] = {}
    pending_parent: dict[int, tuple[int, int, bool]] = {}  # child -> (parent, line, thread)
    for index, line in enumerate(lines):  # pass 1: who created whom (a child may speak first)
        match = _LINE.match(line)
        if not match or match.group(2) not in ("clone", "clone3", "fork", "vfork"):
            continue
        pid, _name, args, ret, tail = match.groups()
        if ret.startswith("-") or ret == "?" or int(ret) == 0:
            continue
        translated = _TRANSLATED.search(tail)  # a child in a new pid namespace
        child = int(translated.group(1)) if translated else int(ret)
        pending_parent[child] = (int(pid), index, "CLONE_THREAD" in args)
    for child, (parent, _index, thread) in pending_parent.items():
        if thread:
            tgid[child] = parent
    for pid in list(tgid):  # threads of threads
        while tgid[pid] in tgid:
            tgid[pid] = tgid[tgid[pid]]

    def proc(pid: int, index: int) -> _Proc:
        pid = tgid.get(pid, pid)
        if pid not in procs:
            parent = pending_parent.get(pid)
            parent_pid = tgid.get(parent[0], parent[0]) if parent else None
            owner = procs.get(parent_pid) if parent_pid is not None else None
            procs[pid] = _Proc(pid, parent_pid, parent[1] if parent else index,
                               bool(owner and owner.locked))  # fmt: skip
        return procs[pid]

    main: _Proc | None = None
    lock_line: dict[int, int] = {}
    for index, line in enumerate(lines):
        exited = _EXIT.match(line)
        if exited:
            pid = int(exited.group(1))
            if pid not in tgid:  # a thread's exit is not its process's
                proc(pid, index).exited = index
            continue
        match = _LINE.match(line)
        if not match:
            continue
        pid_text, name, args, ret, tail = match.groups()
        p = proc(int(pid_text), index)
        ok = ret not in ("-1", "?")
        if name in ("clone", "clone3", "fork", "vfork") and ok and "CLONE_THREAD" not in args:
            translated = _TRANSLATED.search(tail)
            child = int(translated.group(1)) if translated else int(ret)
            if child:
                proc(child, index)  # now, with the filter its parent has at this moment
            continue
        if name == "execve" and ok:
            p.program = p.program or args.split(",", 1)[0].strip('"')
            helper = _HELPER_ARGV.search(args)  # seen when strace shows command lines
            if helper:
                p.role = ROLES[helper.group(1)]
        elif name == "seccomp" and ok and "SECCOMP_SET_MODE_FILTER" in args:
            if not p.locked:
                lock_line[p.pid] = index
            p.locked = True
        elif name in ("openat", "open") and ok:
            resolved = _RESOLVED.match(tail.strip())
            path = resolved.group(1) if resolved else ""
            if not path:
                continue
            if path.startswith(package_dir.rstrip(os.sep) + os.sep):
                if main is None:
                    main = p
                if p.entry is None:
                    p.entry = index
            p.opens.append((index, path, p.locked))
    found = _findings(procs, main, lock_line, package_dir)
    if found.get("sandbox_pids"):  # with their threads: what the OS layer leaves to the sandbox
        inside = set(found["sandbox_pids"])
        found["sandbox_pids"] = sorted(inside | {t for t, owner in tgid.items() if owner in inside})
    return found


def _findings(procs: dict[int, _Proc], main: _Proc | None, lock_line: dict[int, int],
              package_dir: str) -> dict[str, Any]:  # fmt: skip
    if main is None:
        return {"seen": False}

    def ancestry(p: _Proc) -> list[_Proc]:
        chain = []
        while p.parent is not None and p.parent in procs and p is not main:
            p = procs[p.parent]
            chain.append(p)
        return chain

    def in_tree(p: _Proc) -> bool:
        return p is main or main in ancestry(p)

    def sandbox(p: _Proc) -> bool:
        return any(
            (q.program or "").endswith("/bwrap") for q in [p, *ancestry(p)] if q is not main
        ) and in_tree(p)

    def helper(p: _Proc) -> str | None:
        if p.role:
            return p.role
        for _i, path, _locked in p.opens:
            found = _HELPER_OPEN.search(path)
            if found:
                return ROLES[found.group(1)]
        return None

    tree = [p for p in procs.values() if in_tree(p) and not sandbox(p)]
    main_lock = lock_line.get(main.pid)
    unlocked_code: list[dict[str, Any]] = []
    before_entry: list[str] = []
    bytecode: set[str] = set()
    helpers: dict[int, str] = {}
    for p in tree:
        role = helper(p)
        if role:
            helpers[p.pid] = role
        for index, path, locked in p.opens:
            if (role or not locked) and path.endswith(".pyc"):
                bytecode.add(path)
            if not third_party(path, package_dir) or (locked and not role):
                continue
            if p is main and (main.entry is None or index < main.entry):
                before_entry.append(path)
                continue
            unlocked_code.append(
                {"process": role or ("krate" if p is main else p.program), "path": path}
            )
    outlived = []
    for p in tree if main_lock is not None else ():
        if p is main or p.pid in helpers or p.inherited or p.created > main_lock:
            continue
        own = lock_line.get(p.pid)
        alive = p.exited is None or p.exited > main_lock
        if alive and (own is None or own > main_lock):
            outlived.append({"pid": p.pid, "program": p.program or "a fork of krate"})
    sandboxed = {p.pid for p in procs.values() if sandbox(p)}
    return {
        "seen": True,
        "sandbox_pids": sorted(sandboxed),
        "locked_down": main_lock is not None,
        "third_party_while_unlocked": unlocked_code,
        "before_entry_point": sorted(set(before_entry)),
        "helpers": sorted(set(helpers.values())),
        "outlived_lockdown": outlived,
        "children_before_lockdown": sorted(
            {
                (p.program or "a fork of krate")
                for p in procs.values()
                if p.parent == main.pid and main_lock is not None and p.created < main_lock
            }
        ),
        "bytecode": sorted(bytecode),
    }
