"""`krate audit network --prove`: a self-test a reviewer can run, seven layers of evidence.

It runs every krate command that has no network purpose (the list comes from the
CLI's own command tree, so a new command is covered without editing anything
here) as child processes with an isolated KRATE_HOME, and gathers:

1. kernel: the lockdown is in force in this process and in a child (a raw libc
   socket probe is refused), and (seen by strace) every command applied its own;
2. guard: zero Python-level attempts in any command, plus a positive control
   showing the guard does refuse and attribute one;
3. OS observer: each command inside an empty network namespace (bwrap) and under
   `strace -f`, every inet socket syscall classified none / refused / created / sent;
4. static: import contract, RECORD hashes, code-loading hooks (static.py);
5. start-up (seen by strace, startup.py): no process of krate opened third-party
   code before its lockdown, and nothing it started before then outlived it but
   the sandbox and the helpers; for every command, and for a real `krate run`
   and a real `krate build` of a no-op workload (which start the sandbox and the
   egress proxy, then lock down);
6. helpers (helpercheck.py): the egress proxy and the registry transport, started
   as krate starts them, can import only the standard library and krate's copied
   files;
7. bytecode (bytecode.py): every cached `.pyc` a process ran before its lockdown
   (and every one a helper ran, and all of krate's) matches a fresh compile of
   its source.

A layer that cannot be checked here is reported as unchecked and lowers the
verdict to "consistent"; the exit status is 0 only when no checked evidence
disagrees. login and push (they reach a registry) are run with --help only: what
they do on the network is recorded by the egress ledger instead. Never writes
outside its own temporary folder, never uses the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krate.netguard import bytecode, guard, helpercheck, lockdown, observer, startup, static
from krate.netguard.commands import leaf_commands

# Harmless invocations that exercise the real command (not just its --help) in an
# isolated, throw-away KRATE_HOME. A command without an entry runs with --help.
SAFE_INVOCATIONS: dict[tuple[str, ...], list[str]] = {
    ("audit", "note"): ["audit", "note", "recorded by krate audit network --prove"],
    ("audit", "list"): ["audit", "list", "--json"],
    ("audit", "show"): ["audit", "show", "1", "--json"],
    ("audit", "head"): ["audit", "head", "--json"],
    ("audit", "verify"): ["audit", "verify", "--json"],
    ("audit", "network"): ["audit", "network", "--json"],
    ("info",): ["info", "--json"],
    ("policy", "show"): ["policy", "show"],
    ("policy", "explain"): ["policy", "explain", "net", "example.com"],
    ("runs", "list"): ["runs", "list", "--json"],
    ("runs", "show"): ["runs", "show", "last", "--json"],
    ("data", "export"): ["data", "export", "--out", "export.zip"],
    ("data", "where"): ["data", "where", "--json"],
    ("artifacts", "list"): ["artifacts", "list", "--json"],
    ("builds", "list"): ["builds", "list", "--json"],
    ("builds", "last"): ["builds", "last", "--json"],
    ("policy", "list"): ["policy", "list", "--json"],
    ("doctor",): ["doctor", "--json"],  # runs a real sandboxed test command
}
# Real runs of the commands that start a sandbox and the egress proxy before their
# lockdown (default policy: the proxy starts), with a no-op workload, in a fresh store.
REAL_INVOCATIONS: dict[tuple[str, ...], list[str]] = {
    ("run",): ["run", "--", "true"],
    ("build",): ["build", "--out", "out", "--", "touch", "out"],
}
# Run these first: later invocations read what they wrote (audit show 1).
RUN_FIRST = (("audit", "note"),)
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


@dataclass
class Invocation:
    command: str
    argv: list[str]
    mode: str  # "safe", "help", "real", "fast path", "completion"
    env: dict[str, str] = field(default_factory=dict)
    expect_lockdown: bool = True
    note: str | None = None
    writes_base: bool = False  # runs first, in the store every later command starts from
    fresh: bool = False  # starts from an empty store (migrations pending)


def plan(root: Any) -> list[Invocation]:
    """What the proof runs: the root help, the fast path, completion, then every command."""
    items = [
        Invocation("krate", ["--help"], "help"),
        Invocation(
            "krate --version",
            ["--version"],
            "fast path",
            expect_lockdown=False,
            note="answered before anything is imported; no lockdown needed",
        ),
        Invocation(
            "tab completion",
            [],
            "completion",
            env={"_KRATE_COMPLETE": "complete_bash", "COMP_WORDS": "krate au", "COMP_CWORD": "1"},
        ),
    ]
    paths = leaf_commands(root)
    for path in paths:
        name = " ".join(path)
        if path in REAL_INVOCATIONS:
            argv = list(REAL_INVOCATIONS[path])
            if os.geteuid() == 0:  # the proof's own root-owned folder: a root run on purpose
                argv.insert(1, "--as-root")
            items.append(
                Invocation(
                    name,
                    argv,
                    "real",
                    fresh=True,
                    note=f"a real no-op workload: {lockdown.DEFERRED_COMMANDS[path[0]]}",
                )
            )
        elif path[0] in lockdown.DEFERRED_COMMANDS:
            items.append(
                Invocation(
                    name,
                    [*path, "--help"],
                    "help",
                    note=f"network purpose: {lockdown.DEFERRED_COMMANDS[path[0]]}",
                )
            )
        elif path in SAFE_INVOCATIONS:
            items.append(
                Invocation(
                    name, list(SAFE_INVOCATIONS[path]), "safe", writes_base=path in RUN_FIRST
                )
            )
        else:
            items.append(Invocation(name, [*path, "--help"], "help"))
    return items


def prove(
    root: Any,
    *,
    krate: list[str],
    python: str,
    environ: Mapping[str, str],
    package_dir: Path,
    sys_path: list[str],
) -> dict[str, Any]:
    """Run the whole self-test; returns the JSON the command prints."""
    strace = observer.find_strace() if sys.platform.startswith("linux") else None
    bwrap = observer.find_bwrap() if sys.platform.startswith("linux") else None
    # macOS: enforce with a deny-network Seatbelt profile (it shows no attempts).
    seatbelt = shutil.which("sandbox-exec") if sys.platform == "darwin" else None
    kernel = _kernel_layer(python)
    items = plan(root)
    with tempfile.TemporaryDirectory(prefix="krate-prove-") as tmp:
        base = Path(tmp) / "base"

        def one(pair: tuple[int, Invocation]) -> dict[str, Any]:
            index, item = pair
            work = Path(tmp) / f"c{index}"
            work.mkdir(mode=0o700)
            home = work / "home"
            if base.exists() and not item.fresh:
                shutil.copytree(base, home)
            return _run(item, krate, environ, home, work, strace, bwrap, seatbelt, package_dir)

        first = [(i, it) for i, it in enumerate(items) if it.writes_base]
        rest = [(i, it) for i, it in enumerate(items) if not it.writes_base]
        results: dict[int, dict[str, Any]] = {}
        for index, item in first:
            results[index] = _run(
                item, krate, environ, base, Path(tmp), strace, bwrap, seatbelt, package_dir
            )
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            for (index, _), result in zip(rest, pool.map(one, rest), strict=True):
                results[index] = result
        results_list = [results[i] for i in range(len(items))]
        control = _guard_control(python, environ, Path(tmp))
        helpers_layer = helpercheck.check(python, environ)
    results = results_list
    static_layer = static.check(package_dir, environ, sys_path)
    startup_layer = _startup_layer(results, strace)
    bytecode_layer = _bytecode_layer(results, helpers_layer, package_dir, strace)
    # Read last: opening the stores above imported third-party code into this process too.
    guard_layer = _guard_layer(results, guard.violations(), control)
    os_layer = _os_layer(results, strace, bwrap, seatbelt)
    _lockdown_per_command(kernel, results, strace)
    layers = {
        "kernel": kernel,
        "guard": guard_layer,
        "os": os_layer,
        "static": static_layer,
        "startup": startup_layer,
        "helpers": helpers_layer,
        "bytecode": bytecode_layer,
    }

    disagree = [name for name, layer in layers.items() if layer["checked"] and not layer["agrees"]]
    unchecked = [name for name, layer in layers.items() if not layer["checked"]]
    attempts = sum(r["outbound_attempts"] for r in results)
    if disagree:
        verdict = "failed"
    elif unchecked:
        verdict = "consistent"
    else:
        verdict = "proven"
    return {
        "proven": verdict == "proven",
        "verdict": verdict,
        "ok": not disagree,
        "summary": _summary(verdict, results, attempts, disagree, unchecked),
        "commands": results,
        "layers": layers,
        "limits": [
            "The claim is 'no IP sockets' from krate and every process it starts, from the "
            "lockdown on. Local daemons reached over Unix sockets (nscd, D-Bus services, "
            "mDNSResponder) act outside it.",
            "Code the Python environment runs before krate's entry point (.pth files, "
            "sitecustomize, LD_PRELOAD) runs before the lockdown; the hooks present are listed "
            "under layers.static.hooks and the files they opened under "
            "layers.startup.before_entry_point.",
            "run and build are checked through a real no-op workload, login and push through "
            "--help only; the connections their helpers make are in `krate audit network`.",
            "The helpers' import report is their own; the start-up and bytecode layers check "
            "from outside what they opened and ran (with strace; without it, only krate's own "
            "bytecode and this process's are compared with their sources).",
        ],
    }


def _summary(verdict: str, results: list, attempts: int, disagree: list, unchecked: list) -> str:
    n = len(results)
    if verdict == "proven":
        return (
            f"proven: {n} commands, {attempts} outbound attempts; all {LAYER_COUNT} layers "
            "checked and agree"
        )
    if verdict == "consistent":
        return (
            f"consistent but not proven: {n} commands, {attempts} outbound attempts; "
            f"could not check: {', '.join(unchecked)}"
        )
    return f"FAILED: {n} commands, {attempts} outbound attempts; disagreeing: {', '.join(disagree)}"


LAYER_COUNT = 7


def _child_env(environ: Mapping[str, str], home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in ("_KRATE_COMPLETE", "KRATE_DEBUG")}
    env.update({"KRATE_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "100"})
    env.update(extra)
    return env


def _run(
    item: Invocation,
    krate: list[str],
    environ: Mapping[str, str],
    home: Path,
    cwd: Path,
    strace: str | None,
    bwrap: str | None,
    seatbelt: str | None = None,
    package_dir: Path | None = None,
) -> dict[str, Any]:
    log = str(cwd / "strace.log")
    argv = [*krate, *item.argv]
    strings = 512 if item.mode == "real" else 0  # argv names the helpers; no workload data
    cmd = observer.wrap(
        argv, strace=strace, bwrap=bwrap, log=log, trace=startup.TRACE, strings=strings
    )
    if seatbelt:
        cmd = observer.seatbelt_wrap(cmd, seatbelt)
    before = _violation_count(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            cmd,
            env=_child_env(environ, home, item.env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, err = None, "timed out after 120 s"
    recorded = _violation_count(home) - before
    guard_hits = max(recorded, err.count("krate: refused network access"))
    observed = started = None
    if strace:
        try:
            text = Path(log).read_text(encoding="utf-8", errors="replace")
        finally:
            Path(log).unlink(missing_ok=True)
        package = str((package_dir or Path(__file__).parent.parent).resolve())
        started = startup.analyse(text, package)
        observed = observer.classify(text, ignore=set(started.pop("sandbox_pids", ())))
    result = {
        "command": item.command,
        "argv": ["krate", *item.argv],
        "mode": item.mode,
        "exit_code": code,
        "outbound_attempts": guard_hits + (len(observed.attempts) if observed else 0),
        "guard_violations": guard_hits,
        "observed": observed.to_dict() if observed else None,
        "observed_processes": observed.processes if observed else None,
        "lockdown_applied": (observed.lockdown_calls > 0) if observed else None,
        "expect_lockdown": item.expect_lockdown,
        "startup": started,
    }
    if item.note:
        result["note"] = item.note
    if code not in (0, None) and item.mode != "help":
        result["stderr_tail"] = err.strip().splitlines()[-1:] if err.strip() else []
    return result


def _violation_count(home: Path) -> int:
    """guard.violation events in the isolated store (each child records its own)."""
    from krate.errors import KrateError
    from krate.paths import Paths
    from krate.store import events, open_store

    if not (home / "krate.db").exists():
        return 0
    try:
        with open_store(Paths(home, home), readonly=True) as store:
            return len(events.query(store, kind_prefix=guard.EVENT_KIND))
    except KrateError:
        return 0


def _kernel_layer(python: str) -> dict[str, Any]:
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


def _lockdown_per_command(kernel: dict, results: list, strace: str | None) -> None:
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


def _startup_layer(results: list, strace: str | None) -> dict[str, Any]:
    """No third-party code before any lockdown; nothing started before it outlives it."""
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
            }
    exercised = bool(real) and all(v["exit_code"] == 0 and v["locked_down"] for v in real.values())
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
    if not exercised:
        layer["why"] = "the real run and build did not both start and lock down here"
    return layer


def _bytecode_layer(
    results: list, helpers_layer: dict, package_dir: Path, strace: str | None
) -> dict[str, Any]:
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


def _guard_control(python: str, environ: Mapping[str, str], cwd: Path) -> dict[str, Any]:
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


def _guard_layer(results: list, own: list, control: dict) -> dict[str, Any]:
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


def _os_layer(
    results: list, strace: str | None, bwrap: str | None, seatbelt: str | None = None
) -> dict[str, Any]:
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


def lines(result: dict[str, Any]) -> list[str]:
    """The human rendering of a proof: verdict, each layer, the commands, the limits."""
    from krate.netguard.lockdown import describe

    layers = result["layers"]
    out = [result["summary"], ""]

    def status(layer: dict) -> str:
        if not layer["checked"]:
            return "UNCHECKED"
        return "agrees" if layer["agrees"] else "DISAGREES"

    kernel = layers["kernel"]
    text = f"this process: {describe(kernel['this_process'])}"
    if kernel.get("child_probe"):
        probe = kernel["child_probe"]
        text += f"; child probe: {probe['result']} {probe['errno'] or ''}".rstrip()
    per = kernel.get("per_command")
    if isinstance(per, dict):
        text += f"; {per['applied_own_lockdown']} commands applied their own"
        if per["missing"]:
            text += f" (NOT: {', '.join(per['missing'])})"
    out.append(f"kernel  {status(kernel):<9}  {kernel.get('why') or text}")

    g = layers["guard"]
    out.append(
        f"guard   {status(g):<9}  {g['attempts']} Python-level attempts; positive control: "
        f"{g['positive_control']['seen']}"
    )
    for v in g["attempts_in_this_process"]:
        out.append(f"          {v['event']} at {v['file']}:{v['line']}")

    o = layers["os"]
    if o.get("observer"):
        text = f"{o['observer']}: {o.get('inet_syscalls', 0)} inet socket syscalls"
        if o.get("why"):
            text += f" ({o['why']})"
    else:
        text = o["why"]
    out.append(f"os      {status(o):<9}  {text}")
    for a in o.get("attempts", [])[:10]:
        out.append(
            f"          {a['command']}: {a['syscall']} {a['family']} {a['result']}"
            f"{' ' + a['errno'] if a['errno'] else ''} ({a['program'] or 'pid ' + str(a['pid'])})"
        )

    s = layers["static"]
    c, r = s["import_contract"], s["record"]
    out.append(
        f"static  {status(s):<9}  import contract {'holds' if c['ok'] else 'BROKEN'} "
        f"({c['files']} modules); {r['files_checked']} installed files checked against RECORD, "
        f"{len(r['mismatched'])} differ"
    )
    for v in c["violations"]:
        out.append(f"          {v['file']}:{v['line']} imports {v['module']}")
    for path in r["mismatched"][:10]:
        out.append(f"          modified since install: {path}")
    for text in r["editable_not_covered"]:
        out.append(f"          not covered by RECORD (editable install): {text}")
    runs = [h for h in s["hooks"] if h["runs_code"]]
    out.append(
        f"          code-loading hooks present: {len(s['hooks'])} ({len(runs)} can run code)"
    )
    for h in s["hooks"]:
        out.append(f"            {h['kind']}: {h['where']}")

    st = layers["startup"]
    if st["checked"] or st.get("real_runs"):
        real = ", ".join(
            f"{name} exit {v['exit_code']}, started {', '.join(v['children_before_lockdown'])}"
            for name, v in st.get("real_runs", {}).items()
        )
        text = (
            f"{len(st.get('third_party_while_unlocked', []))} third-party files opened before a "
            f"lockdown, {len(st.get('outlived_lockdown', []))} early children outlived it; "
            f"real runs: {real or 'none'}"
        )
    else:
        text = st.get("why", "")
    out.append(f"startup {status(st):<9}  {text}")
    for c in st.get("third_party_while_unlocked", [])[:10]:
        out.append(f"          {c['command']}: {c['process']} opened {c['path']}")
    for o in st.get("outlived_lockdown", [])[:10]:
        out.append(f"          {o['command']}: {o['program']} (pid {o['pid']}) outlived it")
    for path in st.get("before_entry_point", []):
        out.append(f"          before krate's entry point (outside the proof): {path}")

    h = layers["helpers"]
    out.append(
        f"helpers {status(h):<9}  standard library: {', '.join(h.get('standard_library', []))}"
    )
    for name, one in h.get("helpers", {}).items():
        if "path" in one:
            text = f"path {one['path']}; {one['modules_loaded']} modules loaded"
        else:
            text = one.get("why", "")
        verdict = {True: "ok", False: "NOT OK", None: "not checked"}[one.get("ok")]
        out.append(f"          {name}: {verdict}: {text}")
        for bad in one.get("foreign_path", []) + one.get("foreign_files", [])[:10]:
            out.append(f"            not the standard library or krate's copy: {bad}")

    b = layers["bytecode"]
    out.append(
        f"bytecode {status(b):<8}  {b['files_checked']} cached .pyc files ({b['source']}) "
        f"compared with their sources in {b['seconds']} s; {len(b['differ'])} differ"
    )
    for bad in b["differ"][:10]:
        out.append(f"          {bad['file']}: {bad['why']}")

    out += ["", "commands (mode, exit, outbound attempts, what strace saw):"]
    for r in result["commands"]:
        seen = r["observed"]["classification"] if r["observed"] else "not observed"
        out.append(
            f"  {r['command']:<24} {r['mode']:<10} exit {str(r['exit_code']):<4} "
            f"{r['outbound_attempts']:>3}  {seen}"
        )
    out += ["", "what this cannot show:"]
    out += [f"  - {limit}" for limit in result["limits"]]
    return out
