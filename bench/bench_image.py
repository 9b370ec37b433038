"""Benchmark images: `krate run IMAGE -- true` against `krate run -- true`, and krate's
unpacker against `umoci unpack --rootless`.

    .venv/bin/python bench/bench_image.py [--runs 20] [--files 4000]

1. Start-up: `krate run --no-network IMAGE -- true` against `krate run --no-network -- true`,
   interleaved, medians; target (issue 20): the image adds at most 10 ms.
2. Unpack: a generated two-layer gzip image (busybox plus --files small files, with
   whiteouts) unpacked by krate (images/unpack.py) and by `umoci unpack --rootless`
   (after `skopeo copy`, not timed), medians of 3; target: krate at least 2x faster.
   Skipped when skopeo or umoci is not installed (scripts/install --dev installs both).

Uses a throwaway KRATE_HOME and workspace; prints a small table and exits 0.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
KRATE = shutil.which("krate", path=str(Path(sys.executable).parent)) or "krate"
AS_ROOT = ["--as-root"] if os.geteuid() == 0 else []


def make_image(folder: Path, files: int) -> tuple[list[bytes], bytes]:
    from tests.image_support import busybox_layer, config, d, f, layer, oci_layout

    many = [d("data")] + [f(f"data/{i // 100}/file{i}", b"x" * (i % 700)) for i in range(files)]
    dirs = [d(f"data/{j}") for j in range(files // 100 + 1)]
    upper = layer([dirs[0], *many[:1], *dirs, *many[1:], f("etc/.wh.passwd")])
    layers = [busybox_layer(), upper]
    cfg = config(layers)
    oci_layout(folder, layers, cfg, ref="bench")
    return layers, cfg


def bench_run(tmp: Path, runs: int) -> None:
    env = dict(os.environ, KRATE_HOME=str(tmp / "home"))
    ws = tmp / "ws"
    ws.mkdir()
    subprocess.run([KRATE, "image", "import", str(tmp / "layout"), "--ref", "bench:1"],
                   env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    plain = [KRATE, "run", *AS_ROOT, "--no-network", "--", "true"]
    image = [KRATE, "run", *AS_ROOT, "--no-network", "bench:1", "--", "true"]
    for argv in (plain, image):  # warm up: store, page cache
        subprocess.run(argv, env=env, cwd=ws, check=True)
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for argv, out in zip((plain, image), times, strict=True):
            start = time.perf_counter()
            subprocess.run(argv, env=env, cwd=ws, check=True, stdin=subprocess.DEVNULL)
            out.append(time.perf_counter() - start)
    a, b = (statistics.median(t) for t in times)
    print(f"{'krate run -- true':<40} {a * 1000:8.1f} ms")
    print(f"{'krate run IMAGE -- true':<40} {b * 1000:8.1f} ms")
    verdict = "ok" if b - a <= 0.010 else "OVER the 10 ms target"
    print(f"{'image overhead':<40} {(b - a) * 1000:8.1f} ms  ({verdict})")


def bench_unpack(tmp: Path, layers_dir: Path) -> None:
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        print("unpack: skopeo/umoci not installed, skipped")
        return
    from krate.images.unpack import unpack

    layout = tmp / "layout"
    copied = tmp / "copied"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:bench", f"oci:{copied}:bench"],
                   check=True)  # fmt: skip
    blobs = sorted(layers_dir.iterdir())
    ours, theirs = [], []
    for i in range(3):
        target = tmp / f"ours{i}"
        target.mkdir()
        start = time.perf_counter()
        unpack(blobs, target, privileged=False)
        ours.append(time.perf_counter() - start)
        bundle = tmp / f"bundle{i}"
        start = time.perf_counter()
        subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{copied}:bench",
                        str(bundle)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        theirs.append(time.perf_counter() - start)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{'unpack (krate)':<40} {a * 1000:8.1f} ms")
    print(f"{'unpack (umoci --rootless)':<40} {b * 1000:8.1f} ms")
    verdict = "ok" if b >= 2 * a else "UNDER the 2x target"
    print(f"{'umoci / krate':<40} {b / a:8.2f} x  ({verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--files", type=int, default=4000)
    args = parser.parse_args()
    compileall.compile_dir(str(HERE.parent / "src" / "krate"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="krate-bench-image-") as name:
        tmp = Path(name)
        make_image(tmp / "layout", args.files)
        bench_run(tmp, args.runs)
        layers = tmp / "layers"
        layers.mkdir()
        import json

        index = json.loads((tmp / "layout" / "index.json").read_text())
        blob = tmp / "layout" / "blobs" / "sha256"
        manifest = json.loads((blob / index["manifests"][0]["digest"][7:]).read_bytes())
        for i, desc in enumerate(manifest["layers"]):
            shutil.copy(blob / desc["digest"][7:], layers / f"{i:02d}")
        bench_unpack(tmp, layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
