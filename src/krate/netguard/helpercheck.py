"""The proof's look at the two network helpers: what each one can import, and what it did.

The egress proxy and the registry transport are the only krate processes that can
reach the network, so nothing but the standard library and krate's own copied
files may be importable in them. Each is started here exactly as krate starts it
(`krate.egress.start_for_run`, `Transport.start`) and reports its `sys.path` and
the file of every module it loaded; both lists are checked against the standard
library of an isolated interpreter (`python -I -S`) and the helper's own script;
the only other files allowed are the few krate policy modules krate names to the
proxy (loaded by exact file, not found on a path). A site-packages or
dist-packages folder anywhere on a path, or a module loaded from anywhere else,
fails the check.

What it cannot show: a helper that lies about itself (the report is the helper's
own); the OS observer's view of the files a helper opened in a real run, and the
bytecode check, cover that from outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SITE_DIRS = ("site-packages", "dist-packages")
READY_TIMEOUT_S = 30.0


def isolated_path(python: str) -> list[str]:
    """sys.path of `python -I -S`: the standard library and nothing else."""
    done = subprocess.run(
        [python, "-I", "-S", "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.defpath},
    )
    return [p for p in json.loads(done.stdout) if not _in_site_dir(p)] if done.stdout else []


def _in_site_dir(path: str) -> bool:
    return any(part in SITE_DIRS for part in Path(path).parts)


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def judge(
    report: Mapping[str, Any], *, stdlib: list[str], private: list[str], scripts: list[str]
) -> dict[str, Any]:
    """Check one helper's report: every path entry and every module file must be allowed."""
    entries = list(report.get("path") or [])
    files = list(report.get("files") or [])
    foreign_path = [p for p in entries if _in_site_dir(p) or (p not in stdlib and p not in private)]
    allowed_dirs = [*stdlib, *private]
    foreign_files = [
        f
        for f in files
        if f not in scripts and (_in_site_dir(f) or not any(_under(f, d) for d in allowed_dirs))
    ]
    given = list(report.get("given") or [])
    foreign_given = [m for m in given if m != "krate" and not m.startswith("krate.")]
    ok = bool(entries) and not foreign_path and not foreign_files and not foreign_given
    return {
        "ok": ok,
        "path": entries,
        "modules_loaded": len(files) + len(given),
        "files": files,
        "given_by_krate": given,
        "foreign_path": foreign_path,
        "foreign_files": foreign_files + foreign_given,
        **({} if entries else {"why": "the helper sent no report"}),
    }


def egress_report(python: str | None = None) -> tuple[dict[str, Any], list[str], list[str]]:
    """Start the egress proxy as `krate run` does (one loopback rule); its report and places."""
    from krate.egress import start_for_run
    from krate.paths import Paths
    from krate.policy import Flags, effective_policy

    with tempfile.TemporaryDirectory(prefix="krate-prove-egress-") as tmp:
        home = Path(tmp)
        policy = effective_policy(
            workspace=home,
            home=home,
            user_policy_path=home / "no-policy.toml",
            trusted={},
            flags=Flags(policy="strict", allow_host=("localhost:9",)),
        )
        session = start_for_run(policy, "prove", Paths(home, home), python=python)
        try:
            session.recorder.ready.wait(READY_TIMEOUT_S)
            ready = session.recorder.ready_line or {}
        finally:
            session.close(timeout=5)
        from krate import egress
        from krate.egress import helperlib

        allowed = [str(egress.PROXY), str(egress.proxy_script()), *helperlib.files()]
        return ready.get("python") or {}, [], allowed


def transport_report(python: str, environ: Mapping[str, str]) -> tuple[dict, list, list]:
    """Start the registry transport as `krate login`/`push` do; its report and places."""
    from krate.registry.client import TRANSPORT_FILES, Transport, child_env

    transport = Transport.start(python=python, env=child_env(environ))
    return transport.import_report(), [], [str(f) for f in TRANSPORT_FILES]


def check(python: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The helpers layer of the proof."""
    import sys

    stdlib = isolated_path(os.path.realpath(python))
    helpers: dict[str, Any] = {}
    for name, start in (
        ("egress proxy", lambda: egress_report()),
        ("registry transport", lambda: transport_report(sys.executable, environ)),
    ):
        try:
            report, private, scripts = start()
        except Exception as exc:  # e.g. macOS: the proxy's loopback port, under the lockdown
            helpers[name] = {"ok": None, "why": f"could not start it: {type(exc).__name__}: {exc}"}
            continue
        if not report:
            helpers[name] = {"ok": None, "why": "it sent no report"}
            continue
        helpers[name] = judge(report, stdlib=stdlib, private=private, scripts=scripts)
    started = all(h["ok"] is not None for h in helpers.values())
    return {
        "checked": bool(stdlib) and started,
        "agrees": bool(stdlib) and started and all(h["ok"] for h in helpers.values()),
        "standard_library": stdlib,
        "helpers": helpers,
        "cannot_show": (
            "a helper that reports falsely about itself: the OS observer (files each helper "
            "opened in a real run) and the bytecode check cover that from outside"
        ),
    }
