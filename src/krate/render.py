"""Output for humans and for pipelines: tables on a TTY, plain columns, JSON, JSON Lines.

stdout carries data only; messages go to stderr. rich is imported only when a
table is drawn for a terminal, and colour follows NO_COLOR / FORCE_COLOR / TTY.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any


def _default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False, default=_default)
    sys.stdout.write("\n")


def print_jsonl(rows: Iterable[Any]) -> None:
    write = sys.stdout.write
    for row in rows:
        write(json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=_default))
        write("\n")


def is_tty() -> bool:
    return sys.stdout.isatty()


def table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
) -> None:
    """A rich table on a terminal; tab-separated lines (with a header) on a pipe."""
    rows = list(rows)
    if not is_tty():
        sys.stdout.write("\t".join(columns) + "\n")
        for row in rows:
            sys.stdout.write("\t".join("" if c is None else str(c) for c in row) + "\n")
        return
    from rich.table import Table

    grid = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for name in columns:
        grid.add_column(name)
    for row in rows:
        grid.add_row(*("" if c is None else str(c) for c in row))
    console().print(grid)


def console(stderr: bool = False):
    """rich's console; with NO_COLOR no escape code at all (rich's no_color keeps bold)."""
    from rich.console import Console

    if os.environ.get("NO_COLOR"):
        return Console(stderr=stderr, color_system=None, highlight=False)
    return Console(stderr=stderr, highlight=False)


def when(ts: str | None) -> str:
    """An ISO timestamp from the store as tables show it: `2026-11-27 01:02:03` (UTC)."""
    return (ts or "")[:19].replace("T", " ")


def message(text: str) -> None:
    """A line for the human, on stderr."""
    sys.stderr.write(text + "\n")


def transfer_bar():
    """A started rich progress bar for blob transfers on stderr (`push`, `image pull`)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console(stderr=True),
        transient=True,
    )
    bar.start()
    return bar
