"""The human rendering of `krate audit network --prove`: verdict, each layer, commands, limits.

One function per layer, in the order the proof lists them; each gets the layer's
JSON (proof_layers.py) and returns its lines. Indented lines under a layer name
what it saw; lists are cut at ten.
"""

from __future__ import annotations

from typing import Any

from krate.plural import counted

Layer = dict[str, Any]
INDENT = " " * 10


def lines(result: dict[str, Any]) -> list[str]:
    """The human rendering of a proof: verdict, each layer, the commands, the limits."""
    layers = result["layers"]
    out = [result["summary"], ""]
    out += _kernel(layers["kernel"])
    out += _guard(layers["guard"])
    out += _os(layers["os"])
    out += _static(layers["static"])
    out += _startup(layers["startup"])
    out += _helpers(layers["helpers"])
    out += _bytecode(layers["bytecode"])
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


def _status(layer: Layer) -> str:
    if not layer["checked"]:
        return "UNCHECKED"
    return "agrees" if layer["agrees"] else "DISAGREES"


def _kernel(kernel: Layer) -> list[str]:
    from krate.netguard.lockdown import describe

    text = f"this process: {describe(kernel['this_process'])}"
    if kernel.get("child_probe"):
        probe = kernel["child_probe"]
        text += f"; child probe: {probe['result']} {probe['errno'] or ''}".rstrip()
    per = kernel.get("per_command")
    if isinstance(per, dict):
        applied = per["applied_own_lockdown"]
        text += f"; {counted(applied, 'command')} applied {'its' if applied == 1 else 'their'} own"
        if per["missing"]:
            text += f" (NOT: {', '.join(per['missing'])})"
    return [f"kernel  {_status(kernel):<9}  {kernel.get('why') or text}"]


def _guard(g: Layer) -> list[str]:
    out = [
        f"guard   {_status(g):<9}  {g['attempts']} Python-level attempts; positive control: "
        f"{g['positive_control']['seen']}"
    ]
    out += [
        f"{INDENT}{v['event']} at {v['file']}:{v['line']}" for v in g["attempts_in_this_process"]
    ]
    return out


def _os(o: Layer) -> list[str]:
    if o.get("observer"):
        text = f"{o['observer']}: {o.get('inet_syscalls', 0)} inet socket syscalls"
        if o.get("why"):
            text += f" ({o['why']})"
    else:
        text = o["why"]
    out = [f"os      {_status(o):<9}  {text}"]
    for a in o.get("attempts", [])[:10]:
        out.append(
            f"{INDENT}{a['command']}: {a['syscall']} {a['family']} {a['result']}"
            f"{' ' + a['errno'] if a['errno'] else ''} ({a['program'] or 'pid ' + str(a['pid'])})"
        )
    return out


def _static(s: Layer) -> list[str]:
    c, r = s["import_contract"], s["record"]
    out = [
        f"static  {_status(s):<9}  import contract {'holds' if c['ok'] else 'BROKEN'} "
        f"({c['files']} modules); {r['files_checked']} installed files checked against RECORD, "
        f"{len(r['mismatched'])} differ"
    ]
    out += [f"{INDENT}{v['file']}:{v['line']} imports {v['module']}" for v in c["violations"]]
    out += [f"{INDENT}modified since install: {path}" for path in r["mismatched"][:10]]
    out += [
        f"{INDENT}not covered by RECORD (editable install): {text}"
        for text in r["editable_not_covered"]
    ]
    runs = [h for h in s["hooks"] if h["runs_code"]]
    out.append(f"{INDENT}code-loading hooks present: {len(s['hooks'])} ({len(runs)} can run code)")
    out += [f"{INDENT}  {h['kind']}: {h['where']}" for h in s["hooks"]]
    return out


def _startup(st: Layer) -> list[str]:
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
    out = [f"startup {_status(st):<9}  {text}"]
    if st.get("real_runs") and not st["checked"] and st.get("why"):
        out.append(f"{INDENT}not counted: {st['why']}")
    for c in st.get("third_party_while_unlocked", [])[:10]:
        out.append(f"{INDENT}{c['command']}: {c['process']} opened {c['path']}")
    for o in st.get("outlived_lockdown", [])[:10]:
        out.append(f"{INDENT}{o['command']}: {o['program']} (pid {o['pid']}) outlived it")
    for path in st.get("before_entry_point", []):
        out.append(f"{INDENT}before krate's entry point (outside the proof): {path}")
    return out


def _helpers(h: Layer) -> list[str]:
    out = [f"helpers {_status(h):<9}  standard library: {', '.join(h.get('standard_library', []))}"]
    for name, one in h.get("helpers", {}).items():
        if "path" in one:
            text = f"path {one['path']}; {one['modules_loaded']} modules loaded"
        else:
            text = one.get("why", "")
        verdict = {True: "ok", False: "NOT OK", None: "not checked"}[one.get("ok")]
        out.append(f"{INDENT}{name}: {verdict}: {text}")
        for bad in one.get("foreign_path", []) + one.get("foreign_files", [])[:10]:
            out.append(f"{INDENT}  not the standard library or krate's copy: {bad}")
    return out


def _bytecode(b: Layer) -> list[str]:
    out = [
        f"bytecode {_status(b):<8}  {b['files_checked']} cached .pyc files ({b['source']}) "
        f"compared with their sources in {b['seconds']} s; {len(b['differ'])} differ"
    ]
    out += [f"{INDENT}{bad['file']}: {bad['why']}" for bad in b["differ"][:10]]
    return out
