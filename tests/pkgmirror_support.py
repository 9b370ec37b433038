"""A tiny PyPI simple index and npm registry on loopback, for the package-manager tests and
bench/bench_pkg.py: real `pip install` and `npm install`, no internet.

Wheels are written with zipfile (pure-Python, `py3-none-any`, a RECORD with hashes);
npm tarballs come from one `npm pack` of generated packages. `index_from_wheels` and
`registry_from_tarballs` serve given files instead (the bench's real packages): the index
pages and packuments are made from each file's own metadata. Each server is a
standard-library `ThreadingHTTPServer` in a thread of the caller (tests and benches run
unlocked), serving files only from its folder.
"""

from __future__ import annotations

import base64
import hashlib
import html
import http.server
import json
import re
import shutil
import subprocess
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_wheel(
    folder: Path,
    name: str,
    version: str = "1.0",
    requires: tuple[str, ...] = (),
    requires_python: str = "",
) -> Path:
    """A pure-Python wheel `name-version-py3-none-any.whl` in `folder`."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += f"Requires-Python: {requires_python}\n" if requires_python else ""
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{module}/__init__.py": f"VALUE = {name!r}\n",
        f"{info}/METADATA": meta,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: krate-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={_b64(hashlib.sha256(text.encode()).digest())},{len(text.encode())}"
        for path, text in files.items()
    ]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def make_simple_index(root: Path, names: list[str]) -> Path:
    """A PEP 503 simple index under `root`/simple with one wheel per name; returns root."""
    packages = root / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    for name in names:
        wheel = make_wheel(packages, name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        page = root / "simple" / name
        page.mkdir(parents=True, exist_ok=True)
        (page / "index.html").write_text(
            f'<html><body><a href="../../packages/{wheel.name}#sha256={digest}">'
            f"{wheel.name}</a></body></html>\n"
        )
    return root


def make_npm_registry(root: Path, names: list[str], url: str) -> Path:
    """Packuments (`root/<name>.json`) and tarballs (`root/tarballs/`) for `names`, packed by
    one `npm pack`; tarball URLs start with `url` (the server's base, known in advance)."""
    sources = root / "src"
    tarballs = root / "tarballs"
    tarballs.mkdir(parents=True, exist_ok=True)
    dirs = []
    for name in names:
        src = sources / name
        src.mkdir(parents=True, exist_ok=True)
        (src / "package.json").write_text(
            json.dumps({"name": name, "version": "1.0.0", "main": "index.js", "license": "MIT"})
        )
        (src / "index.js").write_text(f"module.exports = {name!r};\n")
        dirs.append(str(src))
    subprocess.run(
        ["npm", "pack", "--silent", "--pack-destination", str(tarballs), *dirs],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    for name in names:
        tgz = tarballs / f"{name}-1.0.0.tgz"
        data = tgz.read_bytes()
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        version = {
            "name": name,
            "version": "1.0.0",
            "main": "index.js",
            "dist": {
                "tarball": f"{url}/{name}/-/{tgz.name}",
                "shasum": hashlib.sha1(data).hexdigest(),
                "integrity": integrity,
            },
        }
        packument = {"name": name, "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}}
        (root / f"{name}.json").write_text(json.dumps(packument))
    return root


def _project(name: str) -> str:
    """PEP 503's normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires_python(wheel: Path) -> str:
    """The wheel's `Requires-Python` (its METADATA), or ""."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(
            n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        )
        for line in z.read(meta).decode("utf-8", "replace").splitlines():
            if not line:
                break  # the headers end at the first empty line
            if line.lower().startswith("requires-python:"):
                return line.split(":", 1)[1].strip()
    return ""


def index_from_wheels(root: Path, wheels: list[Path]) -> Path:
    """A PEP 503 simple index under `root`/simple serving copies of `wheels` (any tags, any
    number of versions per project), with sha256 and requires-python; returns root."""
    packages = root / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    links: dict[str, list[str]] = {}
    for wheel in wheels:
        shutil.copyfile(wheel, packages / wheel.name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        attrs = (
            f' data-requires-python="{html.escape(rp)}"' if (rp := _requires_python(wheel)) else ""
        )
        link = f'<a href="../../packages/{wheel.name}#sha256={digest}"{attrs}>{wheel.name}</a>'
        links.setdefault(_project(wheel.name.split("-", 1)[0]), []).append(link)
    for project, anchors in links.items():
        page = root / "simple" / project
        page.mkdir(parents=True, exist_ok=True)
        body = "<br>\n".join(anchors)
        (page / "index.html").write_text(f"<html><body>\n{body}\n</body></html>\n")
    return root


def _package_json(tgz: Path) -> dict:
    """package.json at the top folder of an npm tarball (usually `package/`, not always)."""
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            top = member.name.removeprefix("./").count("/") == 1
            if member.isfile() and top and member.name.endswith("/package.json"):
                return json.load(tar.extractfile(member))
    raise ValueError(f"{tgz.name}: no package.json")


def registry_from_tarballs(root: Path, tarballs: list[Path], url: str) -> Path:
    """Packuments (`root/<name>.json`) and tarballs (`root/tarballs/`) serving copies of
    `tarballs`: each version is its package.json (dependencies, bin, engines ...) with a
    `dist` of the copy's URL under `url`, shasum and integrity; `latest` is the last given
    version of each name. Returns root."""
    (root / "tarballs").mkdir(parents=True, exist_ok=True)
    packuments: dict[str, dict] = {}
    for tgz in tarballs:
        meta = _package_json(tgz)
        name, version = meta["name"], meta["version"]
        data = tgz.read_bytes()
        (root / "tarballs" / tgz.name).write_bytes(data)
        meta["dist"] = {
            "tarball": f"{url}/{name}/-/{tgz.name}",
            "shasum": hashlib.sha1(data).hexdigest(),
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
        }
        packument = packuments.setdefault(name, {"name": name, "dist-tags": {}, "versions": {}})
        packument["versions"][version] = meta
        packument["dist-tags"]["latest"] = version
    for name, packument in packuments.items():
        (root / (name.replace("/", "%2f") + ".json")).write_text(json.dumps(packument))
    return root


class _NpmHandler(http.server.SimpleHTTPRequestHandler):
    """`/<name>` -> `<name>.json`; `/<name>/-/<file>.tgz` -> `tarballs/<file>.tgz`."""

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0].lstrip("/")
        if "/-/" in path:
            return str(Path(self.directory) / "tarballs" / Path(path).name)
        return str(Path(self.directory) / (path.replace("/", "%2f") + ".json"))

    def end_headers(self) -> None:
        if self.path.split("?")[0].count("/") == 1:
            self.send_header("Cache-Control", "max-age=300")
        super().end_headers()

    def guess_type(self, path: str) -> str:
        return "application/json" if str(path).endswith(".json") else super().guess_type(path)

    def log_message(self, *args: object) -> None:
        pass


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Files with a cache lifetime, as a real index sends them (pip caches only such)."""

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "max-age=600")
        super().end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Listener(http.server.ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: npm opens 15+ connections at once, the
    # kernel drops the SYNs past the backlog and the client resends them a second later
    # (bare `npm install` took 1.7 s instead of 1.0, at random; krate's proxy, dialling
    # one by one, rarely met it). A real registry's backlog is in the hundreds.
    request_queue_size = 128


class Server:
    """A loopback HTTP server over `root` in a daemon thread; `url` is its base."""

    def __init__(
        self, root: Path, *, npm: bool = False, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        handler = partial(_NpmHandler if npm else _QuietHandler, directory=str(root))
        self.httpd = _Listener((host, port), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
