"""Shared helpers for the benchmark scripts: medians of repeated subprocess runs."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
KRATE = shutil.which("krate", path=str(VENV_BIN)) or "krate"


def median_seconds(argv: list[str], runs: int = 20, env: dict | None = None) -> float:
    times = []
    full_env = dict(os.environ, **(env or {}))
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=full_env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
