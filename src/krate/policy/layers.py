"""Layering: builtin → user → project krate.toml files → --policy FILE → flags, and trust.

A project file comes with the repository, so until the user trusts its exact
bytes (SHA-256) it may only narrow: everything it would widen is dropped and
reported in `EffectivePolicy.ignored`. Widening is judged against the layers
below, on resolved paths (a symlink in the repository cannot smuggle `/etc` in as
"inside the workspace"). A replaced network list is intersected with the list
below, so an untrusted `allow = ["*"]` changes nothing and an untrusted
`allow = []` means no network. This module reads files (once, when compiling);
the compiled policy never does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from krate.errors import UsageError
from krate.policy import envnames, hosts, paths
from krate.policy.builtin import BASE, GIT_READ_ONLY, PROFILES, SHELL_STARTUP, builtin_layer
from krate.policy.decide import (
    EffectivePolicy,
    EnvLayer,
    NetRule,
    PathRule,
    WriteLink,
    canonical_hash,
)
from krate.policy.load import PROJECT_FILE, load_file
from krate.policy.model import LIMIT_NAMES, Flags, Item, Layer, Limits, PolicyError

FLAG_KEYS = {
    "profile": "--policy",
    "network.allow": "--no-network",
    "network.add": "--allow-host",
    "filesystem.allow_write": "--allow-write",
    "filesystem.deny_read": "--deny-read",
    "env.pass": "--env",
}


def rule_text(key: str, text: str) -> str:
    return f"{key} {text}" if key.startswith("--") else f"{key}: {text}"


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


class _Compiler:
    def __init__(self, workspace: Path, home: str, real_home: str | None = None) -> None:
        self.ws = str(workspace)
        self.home = home
        # Homes a narrowing `~/...` rule applies under: $HOME, and the real one when it differs.
        self.narrow_homes = list(dict.fromkeys([home, real_home or home]))
        self.resolve = paths.Resolver()
        self.deny: list[PathRule] = []
        self.read_only: list[PathRule] = []
        self.write: list[PathRule] = [
            PathRule(self.ws, "filesystem.allow_write: workspace", f"builtin:{BASE}")
        ]
        self.write_links: list[WriteLink] = []  # allow_write entries reached through a symlink
        self.net: list[NetRule] = []
        self.below: list[NetRule] = []
        self.net_empty = ("no network", f"builtin:{BASE}")
        self.net_layer = f"builtin:{BASE}"
        self.env: list[EnvLayer] = []  # lowest first
        self.limits: dict[str, tuple[int, str]] = {}
        self.ignored: list[str] = []
        self.profile = BASE

    # -- helpers ---------------------------------------------------------------------------
    def _paths(self, layer: Layer, item: Item) -> tuple[str, str]:
        literal = paths.normalize(item.text, home=self.home, base=str(layer.base_dir))
        return literal, self.resolve(literal)

    def _narrow_paths(self, layer: Layer, item: Item) -> list[str]:
        """Literal and resolved paths of a narrowing rule, under every home for `~/...`."""
        homes = self.narrow_homes if item.text.startswith("~") else [self.home]
        out: list[str] = []
        for home in homes:
            literal = paths.normalize(item.text, home=home, base=str(layer.base_dir))
            out += [literal, self.resolve(literal)]
        return out

    def _ignore(
        self, layer: Layer, item: Item | None, what: str, why: str = "", partly: bool = False
    ) -> None:
        """Report a widening that was dropped: `FILE:LINE: WHAT ignored: WHY`."""
        reason = why or (
            "it widens the policy and this project file is not trusted "
            "(review it, then run `krate policy trust`)"
        )
        verdict = "ignored beyond what the layers below allow" if partly else "ignored"
        note = f"{layer.where(item)}{what} {verdict}: {reason}"
        if note not in self.ignored:
            self.ignored.append(note)

    def writable(self, path: str) -> bool:
        if any(paths.under(path, r.path) for r in self.deny):
            return False
        if any(paths.under(path, r.path) for r in self.read_only):
            return False
        return any(paths.under(path, r.path) for r in self.write)

    def env_allows(self, name: str) -> bool:
        upper = name.upper()
        for layer in reversed(self.env):
            if any(match(upper) for _, _, match in layer.passes):
                return True
            if any(match(upper) for _, _, match in layer.strip):
                return False
        return True

    # -- one layer -------------------------------------------------------------------------
    def apply(self, layer: Layer) -> None:
        name, restrict = layer.name, not layer.trusted
        self.below = list(self.net)  # what an untrusted layer is measured against
        # Narrowing rules first: they always apply, from any layer.
        for key, items, target in (
            ("filesystem.deny_read", layer.deny_read, self.deny),
            ("filesystem.read_only", layer.read_only, self.read_only),
        ):
            for item in items:
                rule = rule_text(layer.key(key), item.text)
                for path in dict.fromkeys(self._narrow_paths(layer, item)):
                    target.append(PathRule(path, rule, name))
        if layer.profile is not None:
            profile = layer.profile.text
            key = f"{layer.key('profile')} {profile}: network.allow"
            group = [
                NetRule(pattern, rule_text(key, text), f"builtin:{profile}")
                for text in PROFILES[profile]
                for pattern in hosts.parse_pattern(text)
            ]
            label = f'{layer.key("profile")} = "{profile}"'
            if layer.key("profile").startswith("--"):
                label = f"{layer.key('profile')} {profile}"
            before = len(self.ignored)
            self.replace_network(
                layer, [(layer.profile, group)], f"{label} (no network)", label, name_items=False
            )
            if len(self.ignored) == before:
                self.profile = profile
        if layer.net_allow is not None:
            key = layer.key("network.allow")
            entries = [
                (
                    item,
                    [
                        NetRule(p, rule_text(key, item.text), name)
                        for p in hosts.parse_pattern(item.text)
                    ],
                )
                for item in layer.net_allow
            ]
            empty = key if key.startswith("--") else f"{key}: [] (no network)"
            self.replace_network(layer, entries, empty, key)
        for item in layer.net_add:
            key = layer.key("network.add")
            added = [
                NetRule(p, rule_text(key, item.text), name) for p in hosts.parse_pattern(item.text)
            ]
            lower = [r.pattern for r in self.below]
            if restrict and not all(hosts.covers(lower, r.pattern) for r in added):
                self._ignore(layer, item, f"{key} `{item.text}`")
                continue
            self.net = _dedup(self.net + added)
            self.net_layer = name
        for item in layer.allow_write:
            key = layer.key("filesystem.allow_write")
            literal, resolved = self._paths(layer, item)
            if restrict and not self.writable(resolved):
                shown = "" if resolved == literal else f" (-> {resolved})"
                self._ignore(layer, item, f"{key} `{item.text}`{shown}")
                continue
            self.write.append(PathRule(resolved, rule_text(key, item.text), name))
            if resolved != literal:
                self.write_links.append(
                    WriteLink(literal, resolved, rule_text(key, item.text), name)
                )
        self.apply_env(layer)
        for limit, value, line in layer.limits:
            current = self.limits.get(limit)
            if restrict and current is not None and value > current[0]:
                self._ignore(
                    layer,
                    Item(str(value), line),
                    f"limits.{limit} = {value}",
                    f"raises the limit of {current[0]} from {current[1]} and this "
                    "project file is not trusted",
                )
                continue
            self.limits[limit] = (value, name)

    def replace_network(
        self,
        layer: Layer,
        entries: list[tuple[Item, list[NetRule]]],
        empty_rule: str,
        key: str,
        name_items: bool = True,
    ) -> None:
        """Set the allow list; an untrusted layer gets only what the list below allows too."""
        lower = self.below if not layer.trusted else []
        lower_patterns = [r.pattern for r in lower]
        rules: list[NetRule] = []
        for item, group in entries:
            if layer.trusted or all(hosts.covers(lower_patterns, r.pattern) for r in group):
                rules.extend(group)
                continue
            parts: list[NetRule] = []
            for rule in group:
                if hosts.covers(lower_patterns, rule.pattern):
                    parts.append(rule)
                    continue
                for below in lower:
                    both = hosts.intersect(rule.pattern, below.pattern)
                    if both == below.pattern:
                        parts.append(below)
                    elif both is not None:
                        parts.append(NetRule(both, rule_text(key, both.render()), layer.name))
            what = f"{key} `{item.text}`" if name_items else key
            self._ignore(layer, item, what, partly=bool(parts))
            rules.extend(parts)
        self.net = _dedup(rules)
        self.net_layer = layer.name
        if any(group for _, group in entries):
            self.net_empty = (f"{key}: nothing left that the layers below allow", layer.name)
        else:
            self.net_empty = (empty_rule, layer.name)

    def apply_env(self, layer: Layer) -> None:
        strip_key, pass_key = layer.key("env.strip"), layer.key("env.pass")
        strip = tuple(
            (i.text, rule_text(strip_key, i.text), envnames.compile_pattern(i.text))
            for i in layer.env_strip
        )
        passes = []
        for item in layer.env_pass:
            if not layer.trusted and not (
                envnames.is_literal(item.text) and self.env_allows(item.text)
            ):
                self._ignore(layer, item, f"{pass_key} `{item.text}`")
                continue
            passes.append(
                (item.text, rule_text(pass_key, item.text), envnames.compile_pattern(item.text))
            )
        if strip or passes:
            self.env.append(
                EnvLayer(
                    layer.name,
                    strip,
                    tuple(passes),
                    envnames.compile_any(text for text, _, _ in strip),
                    envnames.compile_any(text for text, _, _ in passes),
                )
            )

    # -- result ----------------------------------------------------------------------------
    def build(
        self,
        stack: list[Layer],
        private_dirs: Sequence[Path],
        extra_read_only: Sequence[tuple[str, str]],
        notes: Iterable[str],
    ) -> EffectivePolicy:
        private: dict[str, None] = {}
        for folder in private_dirs:
            literal = paths.normalize(str(folder), home=self.home, base=self.ws)
            private.update(dict.fromkeys((literal, paths.resolve(literal))))
        for path in private:
            self.deny.append(PathRule(path, "krate's own data and configuration", "builtin"))
        for layer in stack:
            self.apply(layer)
        for path, why in extra_read_only:
            self.read_only.append(PathRule(path, why, "builtin"))
        self.read_only += _in_every_writable_folder(r.path for r in self.write)
        self.deny, self.read_only, self.write = (
            _unique(self.deny),
            _unique(self.read_only),
            _unique(self.write),
        )
        limits = Limits(**{n: self.limits[n][0] for n in LIMIT_NAMES if n in self.limits})
        shown = [layer for layer in stack if not layer.name.startswith("builtin:")]
        if shown and shown[-1].name == "flags" and _only_profile(shown[-1]):
            shown.pop()
        name = "+".join([self.profile, *(layer.name for layer in shown)])
        env_layers = tuple(reversed(self.env))
        policy = EffectivePolicy(
            name=name,
            hash="",
            workspace=Path(self.ws),
            deny_read=tuple(dict.fromkeys(r.path for r in self.deny)),
            allow_write=tuple(dict.fromkeys(Path(r.path) for r in self.write)),
            read_only=tuple(dict.fromkeys(Path(r.path) for r in self.read_only)),
            network_allow=tuple(dict.fromkeys(r.pattern.render() for r in self.net)),
            env_strip=tuple(dict.fromkeys(t for e in self.env for t, _, _ in e.strip)),
            env_pass=tuple(dict.fromkeys(t for e in self.env for t, _, _ in e.passes)),
            limits=limits,
            ignored=tuple([*notes, *self.ignored]),
            home=self.home,
            profile=self.profile,
            deny_rules=tuple(self.deny),
            read_only_rules=tuple(self.read_only),
            write_rules=tuple(self.write),
            write_links=tuple(self.write_links),
            net_rules=tuple(self.net),
            net_default=(
                ("default: no network.allow rule matches", self.net_layer)
                if self.net
                else self.net_empty
            ),
            env_layers=env_layers,
            limit_layers=tuple((n, layer) for n, (_, layer) in self.limits.items()),
            layers=tuple(_describe(layer) for layer in stack),
        )
        policy.hash = canonical_hash(policy.rules_dict(), self.ws)
        policy.resolver = self.resolve
        return policy


def _in_every_writable_folder(roots: Iterable[str]) -> list[PathRule]:
    """Shell start-up files and git's own files at the top of each writable folder, if present.

    Only existing ones: the list is checked at every run and stays short in `policy show`.
    """
    rules = []
    names = (*SHELL_STARTUP, *(f".git/{name}" for name in GIT_READ_ONLY))
    for root in dict.fromkeys(roots):
        for name in names:
            literal = f"{root.rstrip('/')}/{name}"
            if os.path.lexists(literal):
                rule = f"builtin: {name} is read-only in every writable folder"
                for path in dict.fromkeys((literal, paths.resolve(literal))):
                    rules.append(PathRule(path, rule, "builtin"))
    return rules


def _only_profile(layer: Layer) -> bool:
    return not (
        layer.deny_read
        or layer.allow_write
        or layer.read_only
        or layer.net_add
        or layer.net_allow is not None
        or layer.env_pass
        or layer.env_strip
        or layer.limits
    )


def _describe(layer: Layer) -> dict:
    return {
        "layer": layer.name,
        "source": str(layer.source) if layer.source else None,
        "trusted": layer.trusted,
        "sha256": layer.sha256,
    }


def _unique(rules: list[PathRule]) -> list[PathRule]:
    """One rule per path (the first, i.e. lowest layer, names it)."""
    seen: set[str] = set()
    out = []
    for rule in rules:
        if rule.path not in seen:
            seen.add(rule.path)
            out.append(rule)
    return out


def _dedup(rules: list[NetRule]) -> list[NetRule]:
    seen: set = set()
    out = []
    for rule in rules:
        if rule.pattern not in seen:
            seen.add(rule.pattern)
            out.append(rule)
    return out


def compile_layers(
    stack: list[Layer],
    *,
    workspace: Path,
    home: str,
    private_dirs: Sequence[Path] = (),
    extra_read_only: Sequence[tuple[str, str]] = (),
    notes: Iterable[str] = (),
    real_home: str | None = None,
) -> EffectivePolicy:
    """Combine parsed layers (lowest first) into one compiled policy."""
    try:
        compiler = _Compiler(workspace, home, real_home)
        return compiler.build(stack, private_dirs, extra_read_only, notes)
    except ValueError as exc:  # a pattern that passed validation but not compilation: a bug guard
        raise PolicyError(f"invalid policy: {exc}") from None
