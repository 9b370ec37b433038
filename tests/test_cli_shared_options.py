"""The option groups several commands share read the same in each of them."""

from __future__ import annotations

import typer

from krate.cli.app import build

POLICY = ["--policy", "--allow-host", "--allow-write", "--deny-read", "--no-network", "--env"]
WORKLOAD = ["--workdir", "--allow-hardlinked-secrets", "--as-root", "--allow-broad-workspace"]


def options(*path: str) -> list[tuple]:
    command = typer.main.get_command(build(path[0]))
    for name in path:
        command = command.commands[name]
    return [(p.opts[0], p.help, p.metavar, p.default) for p in command.params if p.opts[0] != "-h"]


def test_run_build_and_policy_preview_take_the_same_policy_options_in_the_same_order():
    groups = [
        [o for o in options(*path) if o[0] in POLICY]
        for path in (("run",), ("build",), ("policy", "show"), ("policy", "explain"))
    ]
    assert [o[0] for o in groups[0]] == POLICY
    assert all(group == groups[0] for group in groups)


def test_run_and_build_list_their_shared_options_alike_but_for_the_example():
    def shared(path: str) -> list[tuple]:
        found = [o for o in options(path) if o[0] in POLICY + WORKLOAD + ["--verbose"]]
        return [(name, text.split(" Example: ")[0], *rest) for name, text, *rest in found]

    assert [o[0] for o in shared("run")] == [*POLICY, *WORKLOAD, "--verbose"]
    assert shared("run") == shared("build")
