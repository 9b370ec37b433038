"""The light read-only commands parsed without Typer: their start-up is mostly Typer's.

`krate info`, `audit head`, `runs list` and the like run in shell loops and hooks;
importing Typer alone costs about 5x the start of `python -c pass`, more than their
own work; `image pull` is here too, its start-up being part of every pull's time.
So the lines these commands accept are parsed here, as click parses them, and the
same bodies run (cli/views.py; image pull's is cli/image_pull_run.py, which takes the
transport cli/main.py started and locks down, as on Typer's route). Anything else
(--help, an unknown option, a missing or bad value, `--`, an option before the
command's name) returns None, and Typer parses the line and writes its own message.
The guard and the lockdown are applied before either route (cli/main.py). Tests keep
these tables equal to the Typer commands' options and compare the output of both
routes byte for byte.
"""

from __future__ import annotations

from typing import Any

# (command words) -> (flags: option -> parameter, values: option -> (parameter, minimum
# for an int, None for text, MANY for a repeatable text), positional parameters, defaults
# of the values, body in views).
JSON = {"--json": "json_"}
MANY = "many"
# The policy options of run and build (cli/policy_options.py), as flags_from takes them.
POLICY = {
    "--policy": ("policy", None),
    "--allow-host": ("allow_host", MANY),
    "--allow-private-host": ("allow_private_host", MANY),
    "--allow-write": ("allow_write", MANY),
    "--deny-read": ("deny_read", MANY),
    "--env": ("env", MANY),
}
COMMANDS: dict[tuple[str, ...], tuple[dict, dict, tuple[str, ...], dict, str]] = {
    ("info",): (JSON, {}, (), {}, "info"),
    ("audit", "head"): (JSON, {}, (), {}, "audit_head"),
    ("audit", "list"): (
        {**JSON, "--jsonl": "jsonl"},
        {
            "--since": ("since", None),
            "--until": ("until", None),
            "--kind": ("kind", None),
            "--run": ("run", None),
            "--limit": ("limit", 0),
        },
        (),
        {},
        "audit_list",
    ),
    ("runs", "list"): (JSON, {"--limit": ("limit", 1)}, (), {"limit": 20}, "runs_list"),
    ("runs", "show"): (JSON, {}, ("run",), {}, "runs_show"),
    ("data", "where"): (JSON, {}, (), {}, "data_where"),
    ("image", "list"): (JSON, {}, (), {}, "image_list"),
    ("image", "pull"): (
        {**JSON, "--plain-http": "plain_http", "--quiet": "quiet", "-q": "quiet"},
        {"--platform": ("platform", None)},
        ("ref",),
        {},
        "image_pull",
    ),
    ("builds", "list"): (JSON, {"--limit": ("limit", 0)}, (), {}, "builds_list"),
    ("artifacts", "list"): (JSON, {"--limit": ("limit", 0)}, (), {}, "artifacts_list"),
    ("policy", "list"): (JSON, {}, (), {}, "policy_list"),
    ("audit", "network"): (JSON, {}, (), {}, "audit_network"),
    ("policy", "show"): (
        {**JSON, "--no-network": "no_network"},
        POLICY,
        (),
        {},
        "policy_show_options",
    ),
    ("policy", "explain"): (
        {**JSON, "--no-resolve": "no_resolve", "--no-network": "no_network"},
        POLICY,
        ("kind", "subject"),
        {},
        "policy_explain_options",
    ),
}

# Options these commands have that always go to Typer: the proof starts its real runs
# before the lockdown (cli/main.py, netguard/proof_early.py).
TYPER_ONLY = {("audit", "network"): ("--prove",)}


def parse(args: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(body name in cli/views.py, its keyword arguments), or None to let Typer parse."""
    words = tuple(args[:2])
    spec = COMMANDS.get(words) or COMMANDS.get(words[:1])
    if spec is None:
        return None
    flags, values, positional, defaults, body = spec
    found: dict[str, Any] = {name: False for name in flags.values()}
    found.update({name: defaults.get(name) for name, _ in values.values()})
    given: list[str] = []
    rest = args[len(words) if words in COMMANDS else 1 :]
    i = 0
    while i < len(rest):
        arg = rest[i]
        i += 1
        if not arg.startswith("-"):
            given.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name in flags and not eq:
            found[flags[name]] = True
            continue
        if name not in values:
            return None  # --help, -h, `--`, `-`, an unknown option or a flag with a value
        if not eq:
            if i >= len(rest) or rest[i].startswith("-"):
                return None
            value, i = rest[i], i + 1
        parameter, minimum = values[name]
        if minimum == MANY:
            found[parameter] = [*(found[parameter] or []), value]
            continue
        if minimum is not None:
            if not (value.isascii() and value.isdigit()) or int(value) < minimum:
                return None
            value = int(value)
        found[parameter] = value
    if len(given) != len(positional):
        return None
    found.update(zip(positional, given, strict=True))
    return body, found


def run(parsed: tuple[str, dict[str, Any]]) -> int:
    """Run the parsed command's body, as the Typer command would (collector on, then body)."""
    from krate.cli import views
    from krate.cli.common import started

    body, kwargs = parsed
    started()
    getattr(views, body)(**kwargs)
    return 0
