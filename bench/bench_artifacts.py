"""Hash and store a large output vs `sha256sum` on the same file, side by side.

Target (issue 7): krate's hash+store throughput >= 0.7 x sha256sum's. The store
path is the real one (ArtifactStore.put_file: streamed copy, hash in the same
pass, fsync, link into place); each round stores into a fresh store so nothing
is deduplicated. Rounds alternate the two tools so both see the same page cache.

Usage: .venv/bin/python bench/bench_artifacts.py [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from krate.provenance.store import ArtifactStore


def make_file(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(chunk)
        f.write(chunk[: size & ((1 << 20) - 1)])


def time_sha256sum(path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout.split()[0]


def time_store(path: Path, work: Path) -> tuple[float, str]:
    root = Path(tempfile.mkdtemp(dir=work))
    try:
        start = time.perf_counter()
        stored = ArtifactStore(root / "artifacts").put_file(path)
        return time.perf_counter() - start, stored.hex
    finally:
        for p in (root / "artifacts" / "sha256").glob("*"):
            p.chmod(0o600)
        shutil.rmtree(root)


def time_hash_only(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as f:
        hashlib.file_digest(f, "sha256")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dir", default=None, help="Folder for the test file (default: a temp dir)"
    )
    args = parser.parse_args()
    if shutil.which("sha256sum") is None:
        print("sha256sum not found (coreutils)", file=sys.stderr)
        return 2
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        src = work / "output.bin"
        make_file(src, size)
        time_sha256sum(src)  # warm the page cache for both
        ref_times, store_times, hash_times = [], [], []
        for _ in range(args.rounds):
            t_ref, d_ref = time_sha256sum(src)
            t_store, d_store = time_store(src, work)
            assert d_ref == d_store, "digests differ"
            ref_times.append(t_ref)
            store_times.append(t_store)
            hash_times.append(time_hash_only(src))
    mib = size / (1 << 20)
    ref, store, hashed = (statistics.median(t) for t in (ref_times, store_times, hash_times))
    print(f"file: {mib:.0f} MiB, {args.rounds} rounds, medians")
    print(f"{'sha256sum':<28} {ref:7.3f} s  {mib / ref:8.1f} MiB/s")
    print(f"{'krate hash+store (fsync)':<28} {store:7.3f} s  {mib / store:8.1f} MiB/s")
    print(f"{'hashlib hash only':<28} {hashed:7.3f} s  {mib / hashed:8.1f} MiB/s")
    ratio = ref / store
    print(
        f"krate / sha256sum throughput: {ratio:.2f} (target >= 0.70): "
        + ("OK" if ratio >= 0.7 else "BELOW TARGET")
    )
    return 0 if ratio >= 0.7 else 1


if __name__ == "__main__":
    sys.exit(main())
