"""Compiling the layers, lowest first, into one EffectivePolicy (policy/layers.py stacks them).

Each layer's narrowing rules always apply; its widenings apply only when it is
trusted, or as far as the layers below already allow (an untrusted network list is
intersected with the one below). Whatever is dropped is reported, with the file and
line that asked for it, in `EffectivePolicy.ignored`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from krate.errors import UsageError
from krate.policy import envnames, hosts, paths
from krate.policy.builtin import BASE, GIT_READ_ONLY, PROFILES, SHELL_STARTUP
from krate.policy.decide import (
    EffectivePolicy,
    EnvLayer,
    NetRule,
    PathRule,
    WriteLink,
    canonical_hash,
)
from krate.policy.model import LIMIT_NAMES, Item, Layer, Limits, PolicyError


def rule_text(key: str, text: str) -> str:
    return f"{key} {text}" if key.startswith("--") else f"{key}: {text}"


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
        self.private: list[NetRule] = []  # network.private_ok: names allowed to resolve privately
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
        self.below = list(self.net)  # what an untrusted layer is measured against
        self.apply_narrowing(layer)  # first: narrowing rules always apply, from any layer
        if layer.profile is not None:
            self.apply_profile(layer, layer.profile.text)
        if layer.net_allow is not None:
            key = layer.key("network.allow")
            entries = [(item, self.net_rules(layer, key, item)) for item in layer.net_allow]
            empty = key if key.startswith("--") else f"{key}: [] (no network)"
            self.replace_network(layer, entries, empty, key)
        for item in layer.net_add:
            self.add_network(layer, item)
        for item in layer.private_ok:
            self.private_ok(layer, item)
        for item in layer.allow_write:
            self.allow_write(layer, item)
        self.apply_env(layer)
        for limit, value, line in layer.limits:
            self.apply_limit(layer, limit, value, line)

    def apply_narrowing(self, layer: Layer) -> None:
        for key, items, target in (
            ("filesystem.deny_read", layer.deny_read, self.deny),
            ("filesystem.read_only", layer.read_only, self.read_only),
        ):
            for item in items:
                rule = rule_text(layer.key(key), item.text)
                for path in dict.fromkeys(self._narrow_paths(layer, item)):
                    target.append(PathRule(path, rule, layer.name))

    def apply_profile(self, layer: Layer, profile: str) -> None:
        """A profile replaces the allow list with its own (an untrusted layer's only narrows)."""
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

    @staticmethod
    def net_rules(layer: Layer, key: str, item: Item) -> list[NetRule]:
        return [
            NetRule(p, rule_text(key, item.text), layer.name)
            for p in hosts.parse_pattern(item.text)
        ]

    def add_network(self, layer: Layer, item: Item) -> None:
        key = layer.key("network.add")
        added = self.net_rules(layer, key, item)
        lower = [r.pattern for r in self.below]
        if not layer.trusted and not all(hosts.covers(lower, r.pattern) for r in added):
            self._ignore(layer, item, f"{key} `{item.text}`")
            return
        self.net = _first_per(self.net + added, lambda rule: rule.pattern)
        self.net_layer = layer.name

    def private_ok(self, layer: Layer, item: Item) -> None:
        """An allowed name that may resolve to a private address; it must be allowed too."""
        key = layer.key("network.private_ok")
        pattern = hosts.parse_private(item.text)
        if not layer.trusted:
            self._ignore(layer, item, f"{key} `{item.text}`")
            return
        if not any(hosts.host_contains(r.pattern, pattern) for r in self.net):
            if key.startswith("--"):
                raise UsageError(
                    f"{key} {item.text}: {item.text} is not an allowed host; a private "
                    f"address is allowed only for an allowed host: add --allow-host {item.text}"
                )
            raise PolicyError(
                f"{layer.where(item)}`{key}`: `{item.text}` is not in `network.allow` (or "
                f"`network.add`); a private address is allowed only for an allowed host: "
                f"add it there too"
            )
        rule = NetRule(pattern, rule_text(key, item.text), layer.name)
        self.private = _first_per([*self.private, rule], lambda r: r.pattern)

    def allow_write(self, layer: Layer, item: Item) -> None:
        key = layer.key("filesystem.allow_write")
        literal, resolved = self._paths(layer, item)
        if not layer.trusted and not self.writable(resolved):
            shown = "" if resolved == literal else f" (-> {resolved})"
            self._ignore(layer, item, f"{key} `{item.text}`{shown}")
            return
        self.write.append(PathRule(resolved, rule_text(key, item.text), layer.name))
        if resolved != literal:
            self.write_links.append(
                WriteLink(literal, resolved, rule_text(key, item.text), layer.name)
            )

    def apply_limit(self, layer: Layer, limit: str, value: int, line: int | None) -> None:
        current = self.limits.get(limit)
        if not layer.trusted and current is not None and value > current[0]:
            self._ignore(
                layer,
                Item(str(value), line),
                f"limits.{limit} = {value}",
                f"raises the limit of {current[0]} from {current[1]} and this "
                "project file is not trusted",
            )
            return
        self.limits[limit] = (value, layer.name)

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
        self.net = _first_per(rules, lambda rule: rule.pattern)
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
            _first_per(rules, lambda rule: rule.path)
            for rules in (self.deny, self.read_only, self.write)
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
            # only names still allowed: a later layer may have narrowed the allow list
            private_rules=tuple(
                p
                for p in self.private
                if any(hosts.host_contains(r.pattern, p.pattern) for r in self.net)
            ),
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
        or layer.private_ok
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


def _first_per(rules: list, key: Callable) -> list:
    """One rule per key (path or host pattern): the first, i.e. the lowest layer's, names it."""
    first: dict = {}
    for rule in rules:
        first.setdefault(key(rule), rule)
    return list(first.values())


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
