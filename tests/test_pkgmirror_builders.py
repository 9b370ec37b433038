"""The mirrors bench/bench_pkg.py builds from real packages (`index_from_wheels`,
`registry_from_tarballs` in tests/pkgmirror_support.py): real `pip install` and
`npm install` resolve a dependency from them. No network: the wheels and tarballs are
made here (a scoped npm name, several versions, a bin, a Requires-Python that excludes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pkgmirror_support import (
    Server,
    free_port,
    index_from_wheels,
    make_wheel,
    registry_from_tarballs,
)


def test_pip_resolves_from_an_index_built_from_wheel_files(tmp_path: Path) -> None:
    made = tmp_path / "made"
    made.mkdir()
    wheels = [
        make_wheel(made, "alpha", "1.0", requires=("beta-pkg>=2",)),
        make_wheel(made, "beta-pkg", "1.0"),
        make_wheel(made, "beta-pkg", "2.0"),
        make_wheel(made, "beta-pkg", "3.0", requires_python=">=99"),  # pip must skip it
    ]
    root = index_from_wheels(tmp_path / "index", wheels)
    page = (root / "simple" / "beta-pkg" / "index.html").read_text()  # the normalised name
    assert page.count("<a ") == 3 and 'data-requires-python="&gt;=99"' in page
    server = Server(root)
    try:
        argv = [
            sys.executable, "-m", "pip", "install", "--isolated", "--no-input",
            "--disable-pip-version-check", "--index-url", f"{server.url}/simple/",
            "--target", str(tmp_path / "lib"), "alpha",
        ]  # fmt: skip
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_ROOT_USER_ACTION": "ignore"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    installed = sorted(p.name for p in (tmp_path / "lib").glob("*.dist-info"))
    assert installed == ["alpha-1.0.dist-info", "beta_pkg-2.0.dist-info"]


def _pack(folder: Path, out: Path, meta: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps(meta))
    (folder / "index.js").write_text("module.exports = 1;\n")
    argv = ["npm", "pack", "--silent", "--pack-destination", str(out), str(folder)]
    subprocess.run(argv, check=True, capture_output=True, timeout=120, env=_npm_env(out))


def _npm_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "npm_config_cache": str(home / "npm-cache")}


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm")
def test_npm_resolves_from_a_registry_built_from_tarballs(tmp_path: Path) -> None:
    out = tmp_path / "tarballs"
    out.mkdir()
    base = {"main": "index.js", "license": "MIT"}
    left = {"name": "@krate/left", "version": "1.0.0", "dependencies": {"right": "^1.0.0"}}
    _pack(tmp_path / "src" / "left", out, {**left, **base})
    for version in ("1.0.0", "1.1.0"):
        right = {"name": "right", "version": version, "bin": {"right": "index.js"}}
        _pack(tmp_path / "src" / f"right-{version}", out, {**right, **base})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = registry_from_tarballs(tmp_path / "registry", sorted(out.glob("*.tgz")), url)
    project = tmp_path / "project"
    project.mkdir()
    deps = {"dependencies": {"@krate/left": "1.0.0"}}
    (project / "package.json").write_text(json.dumps({"name": "p", "version": "1.0.0", **deps}))
    server = Server(root, npm=True, port=port)
    try:
        argv = ["npm", "install", "--registry", f"{url}/", "--no-audit", "--no-fund"]
        done = subprocess.run(
            argv, cwd=project, env=_npm_env(tmp_path), capture_output=True, text=True, timeout=120
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    modules = project / "node_modules"
    assert json.loads((modules / "@krate/left/package.json").read_text())["version"] == "1.0.0"
    assert json.loads((modules / "right/package.json").read_text())["version"] == "1.1.0"
    assert (modules / ".bin" / "right").exists()
    lock = json.loads((project / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/right"]["integrity"].startswith("sha512-")
