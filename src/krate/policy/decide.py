"""The compiled, immutable policy and its decisions: pure, fast, and self-explaining.

The sandbox and the egress proxy ask `decide_*` for every access, so these
functions do no I/O at all: symlinks were resolved when the policy was compiled,
and a caller that holds a path from a workload resolves it (os.path.realpath)
before asking. Network decisions use hash lookups (exact host, then each parent
domain for `*.` patterns, then `*`), so the proxy's hot path stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from krate import canonical
from krate.policy import paths
from krate.policy.hosts import HostPattern, normalize_subject
from krate.policy.model import Decision, Limits
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from pathlib import Path  # not at run time: the egress proxy loads this module
    from typing import Any

ALLOW = "allow"
DENY = "deny"
NET_MEMO_SIZE = 65536

# Decisions for hosts not seen before are built on the proxy's path: tuple.__new__
# skips the NamedTuple's Python-level __new__ (about twice as fast).
_tuple_new = tuple.__new__


def _decision(verdict: str, rule: str, layer: str, subject: str) -> Decision:
    return _tuple_new(Decision, (verdict, rule, layer, subject))


class PathRule(NamedTuple):
    path: str  # absolute, normalised (and resolved, or the literal form of a symlink)
    rule: str
    layer: str


class WriteLink(NamedTuple):
    """An allow_write entry whose path, as written, leads through a symlink elsewhere."""

    literal: str  # as written (normalised, not resolved)
    path: str  # where it resolves: what would be writable
    rule: str
    layer: str


class NetRule(NamedTuple):
    pattern: HostPattern
    rule: str
    layer: str


def net_decider(
    net_rules: tuple[NetRule, ...], net_default: tuple[str, str]
) -> Callable[[str, int], Decision]:
    """`decide(host, port) -> Decision` from the network rules and the default alone.

    `EffectivePolicy.decide_net` (and so `krate policy explain`) and the egress proxy,
    which has only these two, decide with it.
    """
    exact: dict[str, list] = {}
    suffix: dict[str, list] = {}
    anyhost = []
    for r in net_rules:
        entry = (r.pattern.ports, r.rule, r.layer)
        if r.pattern.kind == "exact":
            exact.setdefault(r.pattern.host, []).append(entry)
        elif r.pattern.kind == "suffix":
            suffix.setdefault(r.pattern.host, []).append(entry)
        else:
            anyhost.append(entry)
    exacts = {k: tuple(v) for k, v in exact.items()}
    suffixes = {k: tuple(v) for k, v in suffix.items()}
    anys = tuple(anyhost)
    default_rule, default_layer = net_default

    def first(entries, port: int, subject: str) -> Decision | None:
        for ports, rule, layer in entries:
            if ports is None or port in ports:
                return _decision(ALLOW, rule, layer, subject)
        return None

    def decide(host: str, port: int) -> Decision:
        norm = normalize_subject(host)
        if norm is None:
            return _decision(DENY, "invalid host name", "input", f"{host}:{port}")
        name, is_ip = norm
        subject = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        if not 0 < port < 65536:
            return _decision(DENY, "invalid port", "input", subject)
        found = first(exacts.get(name, ()), port, subject)
        if found is None and not is_ip and suffixes:
            dot = name.find(".")
            while dot >= 0 and found is None:
                found = first(suffixes.get(name[dot + 1 :], ()), port, subject)
                dot = name.find(".", dot + 1)
        if found is None:
            found = first(anys, port, subject)
        return found or _decision(DENY, default_rule, default_layer, subject)

    return decide


def private_rule(rules: tuple[NetRule, ...] | list[NetRule], host: str) -> NetRule | None:
    """The rule of `rules` (`network.private_ok`) naming `host`, or None (IP literals: None)."""
    norm = normalize_subject(host)
    if norm is None or norm[1]:
        return None
    for rule in rules:
        if rule.pattern.matches(norm[0], 0, False):
            return rule
    return None


class EnvLayer(NamedTuple):
    layer: str
    strip: tuple[tuple[str, str, Callable[[str], object]], ...]  # (pattern, rule, match)
    passes: tuple[tuple[str, str, Callable[[str], object]], ...]
    # Whether any pattern of `strip` / `passes` matches: asked first (envnames.compile_any).
    strip_any: Callable[[str], bool] | None = None
    pass_any: Callable[[str], bool] | None = None


class EffectivePolicy:
    """The result of layering; answer questions with `decide_*`, record it with `to_dict()`.

    `env_strip`/`env_pass` list the patterns for display; decide per variable with
    `decide_env`, which applies the layers in order (a higher layer wins). Treat it
    as immutable: `decide_net` memoises its answers.
    """

    def __init__(
        self,
        *,
        name: str,
        hash: str,
        workspace: Path,
        deny_read: tuple[Path | str, ...],
        allow_write: tuple[Path, ...],
        read_only: tuple[Path, ...],
        network_allow: tuple[str, ...],
        env_strip: tuple[str, ...],
        env_pass: tuple[str, ...],
        limits: Limits,
        ignored: tuple[str, ...],
        home: str = "/",
        profile: str = "default",
        deny_rules: tuple[PathRule, ...] = (),
        read_only_rules: tuple[PathRule, ...] = (),
        write_rules: tuple[PathRule, ...] = (),
        write_links: tuple[WriteLink, ...] = (),
        net_rules: tuple[NetRule, ...] = (),
        private_rules: tuple[NetRule, ...] = (),
        net_default: tuple[str, str] = ("default", "builtin:default"),
        env_layers: tuple[EnvLayer, ...] = (),  # highest layer first
        limit_layers: tuple[tuple[str, str], ...] = (),  # (name, layer)
        layers: tuple[dict[str, Any], ...] = (),
    ) -> None:
        self.name, self.hash, self.workspace = name, hash, workspace
        self._deny_read, self.allow_write, self.read_only = deny_read, allow_write, read_only
        self.network_allow, self.env_strip, self.env_pass = network_allow, env_strip, env_pass
        self.limits, self.ignored, self.home, self.profile = limits, ignored, home, profile
        self.deny_rules, self.read_only_rules = deny_rules, read_only_rules
        self.write_rules, self.net_rules, self.net_default = write_rules, net_rules, net_default
        self.write_links = write_links
        self.private_rules = private_rules
        self.env_layers, self.limit_layers, self.layers = env_layers, limit_layers, layers
        # The compile's path lookups (policy.paths.Resolver), reused by the run's sandbox spec.
        self.resolver: Any = None
        self._decide_net = net_decider(net_rules, net_default)
        self._memo: dict[tuple[str, int], Decision] = {}

    def __repr__(self) -> str:
        return f"EffectivePolicy(name={self.name!r}, hash={self.hash!r})"

    @property
    def deny_read(self) -> tuple[Path, ...]:
        """Hidden paths as Paths, made on first use: the built-in list is long, and a run
        hands the sandbox the rule paths (`deny_rules`) as text instead."""
        from pathlib import Path

        if self._deny_read and not isinstance(self._deny_read[0], Path):
            self._deny_read = tuple(map(Path, self._deny_read))
        return self._deny_read

    # -- network ---------------------------------------------------------------------------
    def decide_net(self, host: str, port: int) -> Decision:
        """May the workload connect to `host` on `port`? `host` as asked (name or IP literal).

        Answers are memoised per (host, port): the policy is immutable, so this stays pure.
        """
        key = (host, port)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        decision = self._decide_net(host, port)
        memo = self._memo
        if len(memo) >= NET_MEMO_SIZE:
            memo.clear()
        memo[key] = decision
        return decision

    def private_ok(self, host: str) -> NetRule | None:
        """The `private_ok` rule that lets allowed `host` resolve to a private address, if any."""
        return private_rule(self.private_rules, host)

    # -- filesystem ------------------------------------------------------------------------
    def _norm(self, path: Path | str) -> str:
        return paths.normalize(str(path), home=self.home, base=str(self.workspace))

    def decide_read(self, path: Path | str) -> Decision:
        """May the workload read `path`? Pass a resolved path (symlinks followed)."""
        p = self._norm(path)
        for rule in self.deny_rules:
            if paths.under(p, rule.path):
                return Decision(DENY, rule.rule, rule.layer, p)
        return Decision(
            ALLOW, "default: readable (no deny_read rule matches)", f"builtin:{self.profile}", p
        )

    def decide_write(self, path: Path | str) -> Decision:
        """May the workload create or change `path`? deny_read and read_only beat allow_write."""
        p = self._norm(path)
        for rule in self.deny_rules:
            if paths.under(p, rule.path):
                return Decision(DENY, rule.rule, rule.layer, p)
        for rule in self.read_only_rules:
            if paths.under(p, rule.path):
                return Decision(DENY, rule.rule, rule.layer, p)
        for rule in self.write_rules:
            if paths.under(p, rule.path):
                return Decision(ALLOW, rule.rule, rule.layer, p)
        return Decision(
            DENY, "default: outside every allow_write path", f"builtin:{self.profile}", p
        )

    # -- environment -----------------------------------------------------------------------
    def decide_env(self, name: str) -> Decision:
        """Keep variable `name` ("allow") or strip it ("deny")? The highest layer naming it wins."""
        upper = name.upper()
        for layer in self.env_layers:
            if layer.passes and (layer.pass_any is None or layer.pass_any(upper)):
                for _text, rule, match in layer.passes:
                    if match(upper):
                        return Decision(ALLOW, rule, layer.layer, name)
            if layer.strip and (layer.strip_any is None or layer.strip_any(upper)):
                for _text, rule, match in layer.strip:
                    if match(upper):
                        return Decision(DENY, rule, layer.layer, name)
        return Decision(
            ALLOW,
            "default: not secret-looking (no strip pattern matches)",
            f"builtin:{self.profile}",
            name,
        )

    # -- records ---------------------------------------------------------------------------
    def rules_dict(self) -> dict[str, Any]:
        """Every rule with its layer: what `policy show --json` prints and runs record."""

        def path_rows(rules: tuple[PathRule, ...]) -> list[dict[str, str]]:
            return [{"path": r.path, "rule": r.rule, "layer": r.layer} for r in rules]

        limit_layer = dict(self.limit_layers)
        return {
            "filesystem": {
                "deny_read": path_rows(self.deny_rules),
                "read_only": path_rows(self.read_only_rules),
                "allow_write": path_rows(self.write_rules),
            },
            "network": {
                "allow": [
                    {"pattern": r.pattern.render(), "rule": r.rule, "layer": r.layer}
                    for r in self.net_rules
                ],
                "otherwise": {"rule": self.net_default[0], "layer": self.net_default[1]},
                **(
                    {
                        "private_ok": [
                            {
                                "pattern": r.pattern.render().removesuffix(":*"),
                                "rule": r.rule,
                                "layer": r.layer,
                            }
                            for r in self.private_rules
                        ]
                    }
                    if self.private_rules
                    else {}
                ),
            },
            "env": [
                {
                    "layer": layer.layer,
                    "pass": [text for text, _, _ in layer.passes],
                    "strip": [text for text, _, _ in layer.strip],
                }
                for layer in self.env_layers
            ],
            "limits": {
                name: {"value": value, "layer": limit_layer.get(name)}
                for name, value in self.limits.to_dict().items()
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hash": self.hash,
            "profile": self.profile,
            "workspace": str(self.workspace),
            "layers": list(self.layers),
            **self.rules_dict(),
            "ignored": list(self.ignored),
        }


def canonical_hash(policy_rules: dict[str, Any], workspace: str) -> str:
    """SHA-256 of the decision-relevant rules (paths, patterns, env order, limits)."""
    body = {
        "workspace": workspace,
        "deny_read": sorted({r["path"] for r in policy_rules["filesystem"]["deny_read"]}),
        "read_only": sorted({r["path"] for r in policy_rules["filesystem"]["read_only"]}),
        "allow_write": sorted({r["path"] for r in policy_rules["filesystem"]["allow_write"]}),
        "network": sorted({r["pattern"] for r in policy_rules["network"]["allow"]}),
        # only when set: every policy without it keeps its hash
        **(
            {"private_ok": sorted({r["pattern"] for r in policy_rules["network"]["private_ok"]})}
            if policy_rules["network"].get("private_ok")
            else {}
        ),
        "env": [[e["pass"], e["strip"]] for e in policy_rules["env"]],
        "limits": {k: v["value"] for k, v in policy_rules["limits"].items()},
    }
    from krate import sha  # not at the top: the egress proxy loads this module, never this

    text = canonical.dumps(body)
    # surrogateescape: a workspace path that is not UTF-8 is hashed as its bytes
    return sha.hexdigest(text.encode("utf-8", "surrogateescape"))
