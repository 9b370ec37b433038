"""The hard-link check's cost per run: scan a hidden folder of N files.

    .venv/bin/python bench/bench_hardlinks.py [--files 50000] [--runs 5] [--max-entries N]

Every `krate run` scans the hidden paths that exist (docs/run.md, "Hard links"),
so a large hidden folder, such as a browser profile, is paid on every start.
Prints the median scan time and the cost per entry, counting names (the first
`--max-entries`, krate's cap by default) and past the cap (st_nlink alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from krate.sandbox import hardlinks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-entries", type=int, default=hardlinks.MAX_ENTRIES)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="krate-bench-links-", dir="/var/tmp"))
    try:
        per_folder = 250
        for i in range(0, args.files, per_folder):
            folder = root / f"d{i // per_folder}"
            folder.mkdir()
            for j in range(min(per_folder, args.files - i)):
                (folder / f"f{j}").touch()
        os.link(root / "d0" / "f0", root / "d0" / "inside-link")  # harmless: both hidden
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            result = hardlinks.scan([root], args.max_entries)
            times.append(time.perf_counter() - start)
        entries = args.files + args.files // per_folder + 1
        # past the cap the harmless inside link counts too (nothing to compare its names with)
        assert result.complete == (entries <= args.max_entries)
        assert len(result.linked) <= 2
        median = statistics.median(times)
        cap = args.max_entries
        print(f"hard-link scan of {args.files} files (cap {cap}), median of {args.runs}:")
        print(f"  {median * 1000:.1f} ms   ({median / entries * 1e6:.2f} µs per entry)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
