"""Step 1 of a run: the spec, the environment decisions and every refusal, before anything
is recorded or started.

Asks the backend what it enforces (its capabilities), never which platform it is
on: a memory limit needs a cgroup only where the backend's limit is one, the
kernel's refusals (seccomp, a fresh session keyring) are recorded only where the
backend applies them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from krate.errors import EXIT_KRATE_FAILED, KrateError
from krate.records import NamedTuple
from krate.sandbox.env import Stripped, scrub
from krate.sandbox.spec import SandboxSpec, build, is_within

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from krate.policy.decide import EffectivePolicy
    from krate.policy.model import Decision
    from krate.runs import RunRequest
    from krate.sandbox.backend import Backend
    from krate.sandbox.cgroup import Place


class Prepared(NamedTuple):
    spec: SandboxSpec
    stripped: list[Stripped]
    decisions: list[dict[str, Any]]
    refusal: KrateError | None
    notes: list[str]
    identity: dict[str, Any] = {}  # for run.started: {"as_root": true} or {"run_as": {...}}
    memory: Place | None = None  # where limits.memory_mb is enforced, if set
    # What the kernel refuses the workload beyond the namespaces (Linux), for the record.
    kernel: dict[str, Any] | None = None


def _env_decider(
    policy: EffectivePolicy,
) -> tuple[Callable[[str], Decision], Callable[[str], bool]]:
    """The policy's env decision, and "did the user pass this name explicitly" for value checks."""

    def passed(name: str) -> bool:
        # A built-in keep (CA bundle paths) is not the user's say-so: values are still checked.
        decision = policy.decide_env(name)
        return decision.verdict == "allow" and not decision.layer.startswith("builtin")

    return policy.decide_env, passed


def prepare(
    policy: EffectivePolicy, request: RunRequest, backend: Backend, euid: int | None = None
) -> Prepared:
    """The spec, the environment decisions and any refusal, before anything is recorded."""
    from krate.sandbox import hardlinks, identity, sockets

    capabilities = backend.capabilities()
    tmpdir = "/tmp"
    decide, passed = _env_decider(policy)
    env, stripped = scrub(request.environ, decide, passed, tmpdir=tmpdir, sockets=sockets.named)
    who = identity.choose(
        Path(os.path.realpath(policy.workspace)),
        Path(os.path.realpath(request.cwd)),
        as_root=request.as_root,
        euid=os.geteuid() if euid is None else euid,
        backend=backend,
    )
    hide_also = _hide_also(request.environ, stripped, policy.workspace, capabilities.kernel)
    if who.run_as is not None:  # the owner's own secret stores too, not only the caller's
        home = Path(os.path.realpath(policy.home))
        hide_also += identity.home_equivalents(policy.deny_read, home, who.run_as)
    spec = build(
        argv=request.argv,
        cwd=request.cwd,
        workspace=policy.workspace,
        allow_write=policy.allow_write,
        read_only=policy.read_only,
        deny_read=[rule.path for rule in policy.deny_rules],
        env=env,
        limits=policy.limits,
        hide_also=hide_also,
        resolver=getattr(policy, "resolver", None),
    )._replace(run_as=who.run_as)
    decisions = [s.to_decision() for s in stripped]
    image_refusal = None
    if request.image is not None:
        spec, image_refusal = _on_image(spec, request, passed, capabilities)
    if who.decision is not None:
        decisions.append(who.decision)
    notes = list(policy.ignored)
    spec, refusals = _check_writable(policy, request, spec, decisions)
    refusal = who.refusal or image_refusal
    if refusal is None and refusals:
        refusal = KrateError(refusals[0], exit_code=EXIT_KRATE_FAILED)
    kernel = _kernel(capabilities.kernel, notes)
    scan = hardlinks.scan(spec.hidden, hardlinks.MAX_ENTRIES)
    if not scan.complete:
        notes.append(
            f"hard-link check: more than {hardlinks.MAX_ENTRIES} entries under hidden paths; "
            "past them every file with more than one link counts as linked"
        )
    for path in scan.linked:
        if request.allow_hardlinked_secrets:
            decisions.append(_hardlink_decision(path, "allow", "--allow-hardlinked-secrets"))
        else:
            decisions.append(_hardlink_decision(path, "deny", "hidden file has other hard links"))
    if scan.linked and not request.allow_hardlinked_secrets and refusal is None:
        names = ", ".join(str(p) for p in scan.linked[:5])
        more = f" and {len(scan.linked) - 5} more" if len(scan.linked) > 5 else ""
        refusal = KrateError(
            f"refusing to run: {names}{more} is hidden by the policy but has other hard links "
            "(another name for the same file may be readable in the sandbox); remove the extra "
            "links or pass --allow-hardlinked-secrets to accept the risk",
            exit_code=EXIT_KRATE_FAILED,
        )
    memory = None
    if spec.limits.memory_mb is not None and capabilities.memory == "cgroup" and refusal is None:
        memory, refusal = _memory_place(policy, spec.limits.memory_mb)
        if memory is not None:
            notes.append(f"limits.memory_mb enforced by a per-run {memory.describe()}")
    return Prepared(spec, stripped, decisions, refusal, notes, who.record, memory, kernel)


def _on_image(spec: SandboxSpec, request: RunRequest, passed, capabilities):
    """The spec on an image: its environment, and a refusal for what an image run cannot do."""
    from krate.images import runtime

    image = request.image
    spec = spec._replace(image=image, env=runtime.env_for(image, spec.env, passed))
    if getattr(capabilities, "images", False) is not True:
        return spec, KrateError(
            "refusing to run: this sandbox backend cannot run OCI images yet "
            "(bubblewrap on Linux can)",
            exit_code=EXIT_KRATE_FAILED,
        )
    if spec.limits.processes is not None:
        return spec, KrateError(
            "refusing to run: limits.processes is not enforced on an image yet (it needs the "
            "host's prlimit inside the sandbox); remove it for image runs",
            exit_code=EXIT_KRATE_FAILED,
        )
    return spec, None


def _memory_place(policy: EffectivePolicy, limit_mb: int) -> tuple[Place | None, KrateError | None]:
    """The cgroup place for the memory limit, or the refusal: a limit krate cannot enforce."""
    from krate.sandbox import cgroup

    place = cgroup.find()
    if place is not None:
        return place, None
    layer = dict(getattr(policy, "limit_layers", ())).get("memory_mb")
    where = f" (from the {layer} layer)" if layer else ""
    return None, KrateError(
        f"refusing to run: limits.memory_mb = {limit_mb}{where} cannot be enforced here: no "
        "cgroup with the memory controller is delegated to this user, and a per-process "
        "limit does not count tmpfs files or shared memory; remove limits.memory_mb, or run "
        "krate where a cgroup is delegated (as root, or in a systemd user session: "
        "`systemd-run --user --scope krate run ...`); `krate doctor` checks it",
        exit_code=EXIT_KRATE_FAILED,
    )


def _hide_also(
    environ: Mapping[str, str], stripped: list[Stripped], workspace: Path, kernel: bool
) -> list[Path | str]:
    """Paths hidden beyond the policy's: what the workload could reach the caller's secrets by.

    The socket each stripped variable names (an agent answers whoever connects, even
    on a read-only mount); `XDG_RUNTIME_DIR` when it is not under the emptied `/run`;
    and, where the backend has kernel keyrings, their /proc lists of the user's keys.
    Only paths are recorded (in the layout, like every hidden path), never the rest
    of a variable's value.
    """
    from krate.sandbox import keyrings, sockets

    hide: list[Path | str] = []
    for s in stripped:
        hide += sockets.named(environ.get(s.name, ""))
    runtime = sockets.runtime_dir(environ.get("XDG_RUNTIME_DIR"), str(workspace), os.geteuid())
    if runtime is not None:
        hide.append(runtime)
    if kernel:
        hide += keyrings.PROC_FILES
    return hide


def _kernel(kernel: bool, notes: list[str]) -> dict[str, Any] | None:
    """The seccomp filter and session keyring the backend gives the workload, or a note why not."""
    if not kernel:
        return None
    from krate.sandbox import seccomp

    if not seccomp.supported():
        notes.append("no seccomp filter for this CPU: keyrings and vsock are not refused")
        return {"seccomp": [], "session_keyring": "inherited"}
    return {"seccomp": seccomp.describe(), "session_keyring": "new"}


def _hardlink_decision(path: Path, verdict: str, rule: str) -> dict[str, Any]:
    return {
        "area": "filesystem",
        "verdict": verdict,
        "rule": rule,
        "layer": "flags" if verdict == "allow" else "builtin",
        "subject": str(path),
    }


def _check_writable(
    policy: EffectivePolicy, request: RunRequest, spec: SandboxSpec, decisions: list[dict[str, Any]]
) -> tuple[SandboxSpec, list[str]]:
    """Refusals about what the workload could write (each recorded as a decision), and the
    spec with git's own files kept read-only."""
    refusals: list[str] = []
    broad = broad_workspace(policy, spec.workspace)
    if broad and request.allow_broad_workspace:
        decisions.append(_fs_decision(spec.workspace, "allow", "--allow-broad-workspace", "flags"))
    elif broad:
        decisions.append(_fs_decision(spec.workspace, "deny", f"workspace {broad}", "builtin"))
        refusals.append(
            f"refusing to run: the workspace {spec.workspace} {broad}, so the workload could "
            "change any file in it (such as ~/.bashrc); run it in a project folder "
            "(cd there, or --workdir DIR), or pass --allow-broad-workspace to accept this"
        )
    for link in policy.write_links:
        if not is_within(Path(link.path), spec.workspace):
            decisions.append(_fs_decision(Path(link.literal), "deny", link.rule, link.layer))
            refusals.append(
                f"refusing to run: {link.rule}: {link.literal} leads through a symbolic link to "
                f"{link.path}, outside the workspace (a workload may have planted the link); "
                f"name the real path ({link.path}) if you mean to allow writing there"
            )
    spec, guarded = _guard_git(spec)
    for path, why in guarded:
        decisions.append(_fs_decision(path, "deny", "git folder cannot be kept read-only"))
        refusals.append(f"refusing to run: {why}")
    return spec, refusals


def _fs_decision(path: Path, verdict: str, rule: str, layer: str = "builtin") -> dict[str, Any]:
    return {"area": "filesystem", "verdict": verdict, "rule": rule, "layer": layer,
            "subject": str(path)}  # fmt: skip


def broad_workspace(policy: EffectivePolicy, workspace: Path) -> str | None:
    """Why `workspace` is too broad to be writable (None when it is a normal folder).

    Too broad: `/`, the home folder, or a folder holding a secret store the built-in
    profile hides (such as `/home` or `/Users`). Hidden paths the user added
    (`--deny-read secrets`) are fine inside a workspace.
    """
    from krate.policy import paths as policy_paths

    ws = str(workspace)
    home = policy_paths.resolve(str(policy.home))
    if ws == "/":
        return "is the root folder"
    if ws == home:
        return "is your home folder"
    if policy_paths.under(home, ws):
        return f"holds your home folder {home}"
    for rule in policy.deny_rules:
        secret = rule.layer.startswith("builtin:")
        if secret and rule.path != ws and policy_paths.under(rule.path, ws):
            return f"holds {rule.path}, which is hidden from workloads"
    return None


def _guard_git(spec: SandboxSpec) -> tuple[SandboxSpec, tuple[tuple[Path, str], ...]]:
    """The spec with git's own files kept read-only in every writable git folder."""
    from krate.sandbox import gitguard

    guard = gitguard.inspect(spec.writable, spec.read_only, spec.hidden)
    if not (guard.read_only or guard.pins or guard.writable):
        return spec, guard.refusals
    pinned = tuple(p.path for p in guard.pins)
    spec = spec._replace(
        writable=tuple(dict.fromkeys((*spec.writable, *guard.writable))),
        declared_writable=tuple(dict.fromkeys((*spec.declared_writable, *guard.writable))),
        read_only=tuple(dict.fromkeys((*spec.read_only, *guard.read_only, *pinned))),
        declared_read_only=tuple(
            dict.fromkeys((*spec.declared_read_only, *guard.read_only, *pinned))
        ),
        pins=guard.pins,
    )
    return spec, guard.refusals
