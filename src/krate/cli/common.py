"""Small helpers shared by command modules: paths from the environment, output mode."""

from __future__ import annotations

import os

from krate.errors import UsageError
from krate.paths import Paths


def paths() -> Paths:
    return Paths.from_env(os.environ)


def output_mode(json_: bool, jsonl: bool = False) -> str:
    if json_ and jsonl:
        raise UsageError("choose one of --json and --jsonl")
    return "json" if json_ else "jsonl" if jsonl else "text"
