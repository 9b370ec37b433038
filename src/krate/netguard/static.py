"""Static evidence for the proof: krate's import contract, RECORD hashes, code-loading hooks.

What it can support is narrow and said so: the import contract catches krate's
*own* code importing a networking module outside the helpers (third-party
packages import `socket` everywhere; keyring alone pulls in http.client and ssl);
RECORD hashes tie the installed files to what pip installed; the hook list names
every way code can run in krate's interpreter before or beside krate. Reads files
only; never imports the code it inspects.
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import json
import os
import site
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

# Modules whose only purpose is talking to another machine (or serving one).
NETWORK_MODULES = (
    "socket",
    "_socket",
    "ssl",
    "_ssl",
    "socketserver",
    "http.client",
    "http.server",
    "urllib.request",
    "xmlrpc.client",
    "xmlrpc.server",
    "ftplib",
    "smtplib",
    "poplib",
    "imaplib",
    "nntplib",
    "telnetlib",
    "webbrowser",
    "urllib3",
    "requests",
    "httpx",
    "aiohttp",
    "httpcore",
    "websocket",
    "websockets",
    "pycurl",
    "paramiko",
    "dns",
    "grpc",
)
# Inside the krate package: the only places allowed to import them (the helpers).
HELPER_GLOBS = ("egress/*", "registry/transport*")
# Environment variables that make code run inside krate's interpreter or its libraries.
HOOK_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "DYLD_INSERT_LIBRARIES",
    "DYLD_LIBRARY_PATH",
    "DYLD_FRAMEWORK_PATH",
    "PYTHON_KEYRING_BACKEND",
)
PLUGIN_GROUPS = ("keyring.backends", "sqlite_utils")


def _is_network(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in NETWORK_MODULES)


def imported_modules(source: str) -> list[tuple[str, int]]:
    """(module, line) for every import, including `importlib.import_module("x")` literals."""
    tree = ast.parse(source)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.append((first.value, node.lineno))
    return found


def import_contract(package_dir: Path) -> dict[str, Any]:
    """Network imports in krate's own modules; any outside HELPER_GLOBS breaks the contract."""
    violations, allowed, files = [], [], 0
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).as_posix()
        files += 1
        try:
            found = imported_modules(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError) as exc:
            violations.append({"file": rel, "line": 0, "module": f"(unreadable: {exc})"})
            continue
        helper = any(Path(rel).match(glob) for glob in HELPER_GLOBS)
        for module, line in found:
            if _is_network(module):
                entry = {"file": rel, "line": line, "module": module}
                (allowed if helper else violations).append(entry)
    return {
        "ok": not violations,
        "files": files,
        "helpers": list(HELPER_GLOBS),
        "violations": violations,
        "helper_imports": sorted({f"{e['file']}: {e['module']}" for e in allowed}),
    }


def _distributions(paths: Iterable[str]) -> list[metadata.Distribution]:
    """One distribution per name, the first on the path (the one Python imports)."""
    seen: set[str] = set()
    found = []
    for dist in metadata.distributions(path=list(paths)):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        found.append(dist)
    return found


def record_hashes(paths: Iterable[str]) -> dict[str, Any]:
    """Re-hash every installed file that RECORD lists with a hash."""
    checked, mismatched, missing, editable = 0, [], [], []
    dists = _distributions(paths)
    for dist in dists:
        # RECORD read directly: `dist.files` from the importlib_metadata backport (which
        # keyring's dependencies put on sys.meta_path) silently drops missing files.
        for row in csv.reader((dist.read_text("RECORD") or "").splitlines()):
            if len(row) < 2 or "=" not in row[1]:
                continue
            mode, _, value = row[1].partition("=")
            located = Path(str(dist.locate_file(row[0])))
            try:
                data = located.read_bytes()
            except OSError:
                missing.append(str(located))
                continue
            checked += 1
            digest = hashlib.new(mode, data).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != value:
                mismatched.append(str(located))
        direct = dist.read_text("direct_url.json")
        if direct:
            try:
                info = json.loads(direct)
            except ValueError:
                info = {}
            if info.get("dir_info", {}).get("editable"):
                editable.append(f"{dist.metadata['Name']} {dist.version} from {info.get('url')}")
    return {
        "ok": not mismatched,
        "distributions": len(dists),
        "files_checked": checked,
        "mismatched": mismatched,
        "missing": missing,
        "editable_not_covered": editable,
    }


def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE and site.USER_SITE:
        dirs.append(site.USER_SITE)
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def code_loading_hooks(environ: Mapping[str, str], paths: Iterable[str]) -> list[dict[str, Any]]:
    """Every place code can enter krate's interpreter besides krate's own imports."""
    hooks: list[dict[str, Any]] = []
    for directory in _site_dirs():
        for pth in sorted(Path(directory).glob("*.pth")):
            try:
                lines = pth.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            executes = any(line.startswith(("import ", "import\t")) for line in lines)
            hooks.append(
                {
                    "kind": ".pth (executes code at start-up)" if executes else ".pth (adds paths)",
                    "where": str(pth),
                    "runs_code": executes,
                }
            )
    from importlib.machinery import PathFinder

    for name in ("sitecustomize", "usercustomize"):
        spec = PathFinder.find_spec(name, list(paths))
        if spec is not None:
            hooks.append({"kind": name, "where": spec.origin, "runs_code": True})
    for variable in HOOK_VARIABLES:
        if environ.get(variable):
            hooks.append({"kind": f"${variable}", "where": environ[variable], "runs_code": True})
    if os.path.exists("/etc/ld.so.preload") and os.path.getsize("/etc/ld.so.preload"):
        hooks.append(
            {"kind": "/etc/ld.so.preload", "where": "/etc/ld.so.preload", "runs_code": True}
        )
    for group in PLUGIN_GROUPS:
        for ep in metadata.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            owner = f" ({dist.metadata['Name']})" if dist is not None else ""
            hooks.append(
                {
                    "kind": f"entry point {group}",
                    "where": f"{ep.name} = {ep.value}{owner}",
                    "runs_code": group != "sqlite_utils",
                }
            )
    rc = _keyringrc(environ)
    if rc is not None:
        hooks.append({"kind": "keyringrc.cfg", "where": str(rc), "runs_code": True})
    return hooks


def _keyringrc(environ: Mapping[str, str]) -> Path | None:
    if sys.platform == "darwin":
        base = Path(environ.get("HOME", "~")).expanduser() / "Library/Application Support"
    else:
        xdg = environ.get("XDG_CONFIG_HOME")
        base = Path(xdg) if xdg else Path(environ.get("HOME", "~")).expanduser() / ".config"
    path = base / "python_keyring" / "keyringrc.cfg"
    return path if path.exists() else None


def check(package_dir: Path, environ: Mapping[str, str], paths: Iterable[str]) -> dict[str, Any]:
    paths = list(paths)
    contract = import_contract(package_dir)
    record = record_hashes(paths)
    hooks = code_loading_hooks(environ, paths)
    return {
        "checked": True,
        "agrees": contract["ok"] and record["ok"],
        "import_contract": contract,
        "record": record,
        "hooks": hooks,
        "cannot_show": (
            "whether third-party code krate imports would use the network (the installed closure "
            "contains full HTTP stacks krate never calls: the kernel and observer layers cover "
            "that); bytecode in __pycache__ (RECORD lists no hash for it: the bytecode layer "
            "compares it with its source); files of an editable install"
        ),
    }
