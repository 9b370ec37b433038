"""`krate push` of a 1 GiB artifact vs `curl --upload-file` to the same loopback registry.

Run: .venv/bin/python bench/bench_push.py [--size-mib 1024] [--runs 3]
Target (issue 8): krate's throughput >= 0.5 of curl's, side by side against the same
registry (Debian's docker-registry, htpasswd auth, filesystem storage), with the
transport helper's peak RSS < 100 MiB (bounded memory: the blob is streamed).

Each run pushes to a fresh repository so nothing is skipped by the HEAD check.
curl does what the issue names: POST an upload, then one `PUT --upload-file` of the
same stored file to the upload URL. krate's time is the whole `krate push` command
(start-up, auth, three blobs, two manifests, the referrers tag), so it is the
pessimistic side of the comparison. The helper's peak RSS is read from its
/proc/<pid>/status VmHWM while it runs.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from _util import KRATE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.registry_server import Registry  # noqa: E402
from tests.secret_service import SecretService  # noqa: E402

USER, PASSWORD = "bench", "bench-password"


def record_artifact(home: Path, work: Path, size: int) -> None:
    """Write `size` random-ish bytes under work/dist and record them as a build output."""
    from krate.paths import Paths
    from krate.provenance import build as domain
    from krate.store import open_store
    from tests.registry_support import write_big

    (work / "dist").mkdir(parents=True)
    write_big(work / "dist" / "big.bin", size)
    paths = Paths(data_dir=home, config_dir=home)
    prepared = domain.prepare(workdir=work, outs=["dist"], environ={})
    now = datetime.now(UTC)
    facts = domain.RunFacts(
        run_id="BENCH",
        argv=["bench"],
        started_on=now,
        finished_on=now,
        exit_status=0,
        backend="bench",
    )
    with open_store(paths) as store:
        domain.record(store, paths, prepared, facts)


def watch_helper(parent: int, peak: list[int], stop: threading.Event) -> None:
    """Track the VmHWM (peak RSS) of the transport helper, a child of `parent`."""
    pid = None
    while not stop.is_set():
        if pid is None:
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        stat = (proc / "stat").read_text()
                        if (
                            int(stat.rsplit(")", 1)[1].split()[1]) == parent
                            and b"transport.py" in (proc / "cmdline").read_bytes()
                        ):
                            pid = int(proc.name)
                            break
                    except (OSError, ValueError, IndexError):
                        continue
        else:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                kib = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
                peak[0] = max(peak[0], kib)
            except (OSError, AttributeError):
                pass
        time.sleep(0.02)


def krate_push(env: dict, ref: str) -> tuple[float, int]:
    peak = [0]
    stop = threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [KRATE, "push", "big.bin", ref], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    watcher = threading.Thread(target=watch_helper, args=(proc.pid, peak, stop), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    took = time.perf_counter() - start
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"krate push failed: {err.decode()}")
    return took, peak[0]


def curl_upload(reg: Registry, repo: str, path: Path, digest: str) -> float:
    auth = f"{USER}:{PASSWORD}"
    start = time.perf_counter()
    head = subprocess.run(
        [
            "curl",
            "-sS",
            "-u",
            auth,
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            f"http://{reg.name}/v2/{repo}/blobs/uploads/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    location = next(
        line.split(":", 1)[1].strip()
        for line in head.splitlines()
        if line.lower().startswith("location:")
    )
    code = subprocess.run(
        [
            "curl",
            "-sS",
            "-u",
            auth,
            "--upload-file",
            str(path),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"{location}&digest={digest}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    took = time.perf_counter() - start
    if code != "201":
        raise SystemExit(f"curl upload answered {code}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="krate-bench-push-") as tmp:
        tmp_path = Path(tmp)
        home = tmp_path / "home"
        record_artifact(home, tmp_path / "work", size)
        blob = next((home / "artifacts" / "sha256").iterdir())
        digest = "sha256:" + blob.name
        reg = Registry(tmp_path / "registry", users={USER: PASSWORD}).start()
        keychain = SecretService().start()  # gnome-keyring on a private D-Bus bus
        env = keychain.env(KRATE_HOME=str(home))
        krate_times, curl_times, peaks = [], [], []
        try:
            subprocess.run(
                [KRATE, "login", reg.name, "-u", USER, "--password-stdin"],
                input=PASSWORD.encode(),
                env=env,
                check=True,
                capture_output=True,
            )
            for i in range(args.runs):
                took, peak = krate_push(env, f"{reg.name}/bench/krate{i}:1")
                krate_times.append(took)
                peaks.append(peak)
                curl_times.append(curl_upload(reg, f"bench/curl{i}", blob, digest))
                print(
                    f"run {i + 1}: krate push {took:6.2f} s   curl --upload-file "
                    f"{curl_times[-1]:6.2f} s   helper peak RSS {peak / 1024:5.1f} MiB"
                )
        finally:
            reg.kill()
            keychain.stop()
    mib = size / (1 << 20)
    k, c = statistics.median(krate_times), statistics.median(curl_times)
    ratio = c / k
    print(f"size {mib:.0f} MiB, median of {args.runs}:")
    print(f"  krate push          {k:6.2f} s  {mib / k:7.1f} MiB/s")
    print(f"  curl --upload-file  {c:6.2f} s  {mib / c:7.1f} MiB/s")
    print(f"  throughput ratio krate/curl = {ratio:.2f} (target >= 0.5)")
    print(f"  transport helper peak RSS = {max(peaks) / 1024:.1f} MiB (target < 100 MiB)")
    if ratio < 0.5 or max(peaks) >= 100 * 1024:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
