"""Layering: builtin → user → project krate.toml files → --policy FILE → flags, and trust.

A project file comes with the repository, so until the user trusts its exact
bytes (SHA-256) it may only narrow: everything it would widen is dropped and
reported in `EffectivePolicy.ignored`. Widening is judged against the layers
below, on resolved paths (a symlink in the repository cannot smuggle `/etc` in as
"inside the workspace"). A replaced network list is intersected with the list
below, so an untrusted `allow = ["*"]` changes nothing and an untrusted
`allow = []` means no network. This module finds and reads the layers (once, when
compiling); policy/compiler.py combines them; the compiled policy never reads a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from krate.errors import UsageError
from krate.policy import envnames, hosts, paths
from krate.policy.builtin import BASE, PROFILES, builtin_layer
from krate.policy.compiler import compile_layers
from krate.policy.load import PROJECT_FILE, load_file
from krate.policy.model import Flags, Item, Layer

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.policy.decide import EffectivePolicy

FLAG_KEYS = {
    "profile": "--policy",
    "network.allow": "--no-network",
    "network.add": "--allow-host",
    "network.private_ok": "--allow-private-host",
    "filesystem.allow_write": "--allow-write",
    "filesystem.deny_read": "--deny-read",
    "env.pass": "--env",
}


def find_project_files(start: Path) -> list[Path]:
    """Every krate.toml at or above `start`, outermost first, up to the filesystem root.

    All of them apply, each as its own layer (an untrusted one only narrows), so a file
    planted in a subfolder can add restrictions but never undo the project's. The walk
    does not stop at a repository root: a workload can create `sub/.git` as easily as
    `sub/krate.toml`, so no marker in a writable folder may decide where the search ends.
    A file is named by its resolved folder plus `krate.toml`, never by what a symlink
    there points at: trust belongs to the file where it acts (a planted link to a trusted
    file elsewhere is not trusted).
    """
    here = Path(paths.resolve(str(start.absolute())))
    found = []
    for folder in (here, *here.parents):
        candidate = folder / PROJECT_FILE
        try:
            if candidate.is_file():
                found.append(candidate)
        except OSError:  # an unsearchable folder on the way up holds no policy we can read
            continue
    found.reverse()
    return found


def find_project_file(start: Path) -> Path | None:
    """The nearest krate.toml at or above `start` (see find_project_files for all of them)."""
    found = find_project_files(start)
    return found[-1] if found else None


def project_layer_name(path: Path, outermost: Path) -> str:
    """`project` for the outermost file, `project:SUB/DIR` for one below it."""
    relative = path.parent.relative_to(outermost.parent)
    return "project" if relative == Path() else f"project:{relative.as_posix()}"


def flags_layer(flags: Flags, workspace: Path) -> Layer:
    """The command line as a layer; invalid values are usage errors naming the option."""
    if flags.no_network and flags.allow_host:
        raise UsageError("choose one of --no-network and --allow-host")
    for option, values, check in (
        ("--allow-write", flags.allow_write, paths.check_text),
        ("--deny-read", flags.deny_read, paths.check_text),
        ("--env", flags.env, envnames.check_text),
    ):
        for value in values:
            why = check(value)
            if why:
                raise UsageError(f"{option} {value!r}: {why}")
    for value in flags.allow_host:
        try:
            hosts.parse_pattern(value)
        except ValueError as exc:
            raise UsageError(f"--allow-host {value!r}: {exc}") from None
    for value in flags.allow_private_host:
        try:
            hosts.parse_private(value)
        except ValueError as exc:
            raise UsageError(f"--allow-private-host {value!r}: {exc}") from None
    profile = flags.policy if flags.policy in PROFILES else None
    return Layer(
        name="flags",
        trusted=True,
        base_dir=workspace,
        profile=Item(profile) if profile else None,
        deny_read=tuple(Item(v) for v in flags.deny_read),
        allow_write=tuple(Item(v) for v in flags.allow_write),
        net_allow=() if flags.no_network else None,
        net_add=tuple(Item(v) for v in flags.allow_host),
        private_ok=tuple(Item(v) for v in flags.allow_private_host),
        env_pass=tuple(Item(v) for v in flags.env),
        keys=FLAG_KEYS,
    )


def policy_file_path(value: str, workspace: Path) -> Path:
    """`--policy VALUE` when it is not a builtin name: a file, relative to the workspace."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = workspace / path
    if not path.is_file():
        names = ", ".join(PROFILES)
        raise UsageError(f"--policy {value!r} is neither a built-in profile ({names}) nor a file")
    return Path(paths.resolve(str(path)))


def effective_policy(
    *,
    workspace: Path,
    home: Path,
    user_policy_path: Path,
    trusted: Mapping[str, str],
    flags: Flags,
    private_dirs: Sequence[Path] = (),
    notes: Iterable[str] = (),
    real_home: Path | None = None,
) -> EffectivePolicy:
    """Compile the layers for a run in `workspace`; raise PolicyError (`FILE:LINE: ...`).

    `trusted` maps project file paths to the SHA-256 the user trusted. `private_dirs`
    (krate's own data and config folders) are hidden from the workload like secrets.
    `home` is $HOME, what `~` means; `real_home` is the account's home from the password
    database: when it differs, every `~/...` deny_read and read_only rule applies under
    both, so `HOME=/elsewhere krate run` cannot move the secret stores out of the way.
    """
    ws = Path(paths.resolve(str(workspace.absolute())))
    stack: list[Layer] = [builtin_layer(BASE, ws)]
    if user_policy_path.is_file():
        user = load_file(user_policy_path, name="user", trusted=True).layer
        stack.append(_rebase(user, ws))
    project_files = find_project_files(ws)
    for path in project_files:
        name = project_layer_name(path, project_files[0])
        stack.append(load_file(path, name=name, trusted_digests=dict(trusted)).layer)
    if flags.policy and flags.policy not in PROFILES:
        stack.append(
            load_file(policy_file_path(flags.policy, ws), name="policy-file", trusted=True).layer
        )
    stack.append(flags_layer(flags, ws))
    extra: dict[str, str] = {}
    for path in project_files:  # the link where it acts and the file it points at
        for where in (str(path), paths.resolve(str(path))):
            extra.setdefault(where, "a project policy file")
    return compile_layers(
        stack,
        workspace=ws,
        home=str(home),
        private_dirs=private_dirs,
        extra_read_only=list(extra.items()),
        notes=notes,
        real_home=str(real_home) if real_home else None,
    )


def _rebase(layer: Layer, workspace: Path) -> Layer:
    """User-policy relative paths mean "in the workspace", not "in the config folder"."""
    return layer._replace(base_dir=workspace)
