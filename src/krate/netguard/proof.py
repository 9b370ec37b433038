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
   and a real `krate build` whose workload writes one file (they start the
   sandbox and the egress proxy, then lock down; they count only if the
   workload ran);
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

The parts: proof_run.py runs one command and observes it, proof_early.py starts
the real run and build before the prove command locks itself down (cli/main.py),
proof_layers.py checks each layer's evidence, proof_report.py renders the result
for a person.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krate.netguard import (
    guard,
    helpercheck,
    lockdown,
    proof_early,
    proof_layers,
    proof_run,
    static,
)
from krate.netguard.commands import leaf_commands
from krate.netguard.proof_early import REAL_INVOCATIONS
from krate.netguard.proof_report import lines
from krate.netguard.proof_run import Invocation, Observers, run_one
from krate.plural import counted

if TYPE_CHECKING:
    import click

__all__ = ["REAL_INVOCATIONS", "Invocation", "lines", "plan", "prove"]

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
# Run these first: later invocations read what they wrote (audit show 1).
RUN_FIRST = (("audit", "note"),)


def plan(root: click.Command) -> list[Invocation]:
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
            env={
                "_KRATE_COMPLETE": "complete_bash",
                "COMP_WORDS": "krate run --policy ",
                "COMP_CWORD": "3",
            },  # fmt: skip
            note="an option's values: Typer's completion, after the lockdown",
        ),
        Invocation(
            "tab completion of names",
            [],
            "completion",
            env={"_KRATE_COMPLETE": "complete_bash", "COMP_WORDS": "krate au", "COMP_CWORD": "1"},
            expect_lockdown=False,
            note="command names, from a table before anything is imported; no lockdown needed",
        ),
    ]
    paths = leaf_commands(root)
    real = proof_early.real_invocations()
    for path in paths:
        name = " ".join(path)
        if path in real:
            items.append(real[path])
        elif lockdown.deferred_purpose(path):
            items.append(
                Invocation(
                    name,
                    [*path, "--help"],
                    "help",
                    note=f"network purpose: {lockdown.deferred_purpose(path)}",
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


LAYER_COUNT = 7
LIMITS = [
    "The claim is 'no IP sockets' from krate and every process it starts, from the "
    "lockdown on. Local daemons reached over Unix sockets (nscd, D-Bus services, "
    "mDNSResponder) act outside it.",
    "Code the Python environment runs before krate's entry point (.pth files, "
    "sitecustomize, LD_PRELOAD) runs before the lockdown; the hooks present are listed "
    "under layers.static.hooks and the files they opened under "
    "layers.startup.before_entry_point.",
    "run and build are checked through a real workload that writes one file, login and "
    "push through --help only; the connections their helpers make are in `krate audit network`.",
    "The helpers' import report is their own; the start-up and bytecode layers check "
    "from outside what they opened and ran (with strace; without it, only krate's own "
    "bytecode and this process's are compared with their sources).",
]


def prove(
    root: click.Command,
    *,
    krate: list[str],
    python: str,
    environ: Mapping[str, str],
    package_dir: Path,
    sys_path: list[str],
) -> dict[str, Any]:
    """Run the whole self-test; returns the JSON the command prints."""
    seen = Observers.find()
    kernel = proof_layers.kernel_layer(python)
    # The real runs were started before this process locked down (cli/main.py); called
    # in-process (tests), or where that failed, they start now and say what they can.
    early = proof_early.take() or proof_early.Early(
        Path(tempfile.mkdtemp(prefix="krate-prove-")), {}, "not started at krate's entry"
    )
    try:
        results = _run_all(plan(root), early, krate, environ, seen, package_dir)
        control = proof_layers.guard_control(python, environ, early.tmp)
        helpers_layer = helpercheck.check(python, environ)
    finally:
        for running in early.runs.values():
            proof_run.stop(running)  # any the plan did not name
        shutil.rmtree(early.tmp, ignore_errors=True)
    static_layer = static.check(package_dir, environ, sys_path)
    startup_layer = proof_layers.startup_layer(results, seen.strace, early.error)
    bytecode_layer = proof_layers.bytecode_layer(results, helpers_layer, package_dir, seen.strace)
    # Read last: opening the stores above imported third-party code into this process too.
    guard_layer = proof_layers.guard_layer(results, guard.violations(), control)
    os_layer = proof_layers.os_layer(results, seen.strace, seen.bwrap, seen.seatbelt)
    proof_layers.lockdown_per_command(kernel, results, seen.strace)
    layers = {
        "kernel": kernel,
        "guard": guard_layer,
        "os": os_layer,
        "static": static_layer,
        "startup": startup_layer,
        "helpers": helpers_layer,
        "bytecode": bytecode_layer,
    }
    return _verdict(layers, results)


def _run_all(
    items: list[Invocation],
    early: proof_early.Early,
    krate: list[str],
    environ: Mapping[str, str],
    seen: Observers,
    package_dir: Path,
) -> list[dict[str, Any]]:
    """Every planned command, in plan order: the base store's writers first, the rest at once.

    A real run started before the lockdown (`early`) is only waited for and read.
    """
    tmp = early.tmp
    base = tmp / "base"

    def one(pair: tuple[int, Invocation]) -> dict[str, Any]:
        index, item = pair
        running = early.runs.pop(item.command, None) if item.mode == "real" else None
        if running is not None:
            return proof_run.finish(running, seen.strace, package_dir)
        work = tmp / f"c{index}"
        work.mkdir(mode=0o700)
        home = work / "home"
        if base.exists() and not item.fresh:
            shutil.copytree(base, home)
        return run_one(item, krate, environ, home, work, seen, package_dir)

    first = [(i, it) for i, it in enumerate(items) if it.writes_base]
    rest = [(i, it) for i, it in enumerate(items) if not it.writes_base]
    results: dict[int, dict[str, Any]] = {}
    for index, item in first:
        results[index] = run_one(item, krate, environ, base, tmp, seen, package_dir)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for (index, _), result in zip(rest, pool.map(one, rest), strict=True):
            results[index] = result
    return [results[i] for i in range(len(items))]


def _verdict(layers: dict[str, dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """proven (every layer checked and agrees), consistent (some unchecked), or failed."""
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
        "limits": list(LIMITS),
    }


def _summary(verdict: str, results: list, attempts: int, disagree: list, unchecked: list) -> str:
    seen = f"{counted(len(results), 'command')}, {counted(attempts, 'outbound attempt')}"
    if verdict == "proven":
        return f"proven: {seen}; all {LAYER_COUNT} layers checked and agree"
    if verdict == "consistent":
        return f"consistent but not proven: {seen}; could not check: {', '.join(unchecked)}"
    return f"FAILED: {seen}; disagreeing: {', '.join(disagree)}"
