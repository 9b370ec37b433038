"""Package managers' caches: krate's own, one set per project, where the tools look for them.

The sandbox's home is read-only, so `npm install` failed with EROFS on `~/.npm`, and
making the user's real caches writable would let a malicious run poison them for
every later bare `npm install` or `pip install` on the host. Instead krate keeps one
cache folder per tool and per project (workspace) under its data folder
(`caches/<key>/<tool>`, 0700), shared by that project's runs:

- bubblewrap mounts each at the usual path (`~/.npm`, `~/.cache/pip`, ...) when that
  folder exists. It can only mount onto an existing path, and krate never creates one
  in the user's home (a run leaves the host as it was): for a missing one the cache is
  mounted under the sandbox's private /tmp (`/tmp/.krate-cache/<tool>`) and the tool's
  own variable names it. Nothing is mounted at a path inside a writable folder (the
  user's own choice, `allow_write = ["~/.cache/pip"]`) or a hidden one.
- Seatbelt cannot mount: the folders become writable and the tools' own variables
  (`npm_config_cache`, `PIP_CACHE_DIR`, ...) point at them; cargo has no such
  variable for its registry alone, so its folders stay read-only there.

Per project, not global: a cache a run can write is a cache that run can poison, and
pip's wheel cache, Go's build cache and a cache index keyed by URL are not verified
against the lock file when read. One project's untrusted install cannot plant code in
another project's. The cost is a download per project; `krate data prune` removes
caches not used since its cutoff, or whose project folder is gone.

The workload sees only the tool folders, never `caches/<key>` (its `workspace` and
`used` files) nor the rest of the data folder (the database stays hidden). krate
itself never follows a link inside a cache: removal is `shutil.rmtree` (which
unlinks links) and sizes come from `lstat`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from krate import sha
from krate.paths import DIR_MODE, FILE_MODE, ensure_private_dir
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.sandbox.spec import SandboxSpec

CACHES = "caches"  # under the data folder
WORKSPACE_FILE = "workspace"  # the project's path, for `krate data where` and prune
USED_FILE = "used"  # its modification time: when a run last used the caches


class Tool(NamedTuple):
    name: str  # the folder under caches/<key>/
    path: str  # the usual place, under the home (`.cache/` follows XDG_CACHE_HOME)
    env: str | None  # the variable that moves it (the user's; krate's where it cannot mount)


TOOLS = (
    Tool("npm", ".npm", "npm_config_cache"),
    Tool("pip", ".cache/pip", "PIP_CACHE_DIR"),
    Tool("uv", ".cache/uv", "UV_CACHE_DIR"),
    Tool("yarn", ".cache/yarn", "YARN_CACHE_FOLDER"),
    # pnpm's store setting travels as `npm_config_store_dir`, which npm warns about on every
    # command ("Unknown env config"): pnpm gets the mount only, where its store exists.
    Tool("pnpm", ".local/share/pnpm/store", None),
    Tool("go-build", ".cache/go-build", "GOCACHE"),
    Tool("go-mod", "go/pkg/mod", "GOMODCACHE"),
    Tool("cargo-registry", ".cargo/registry", None),
    Tool("cargo-git", ".cargo/git", None),
)


def key(workspace: Path) -> str:
    """The project's folder name: a hash of the workspace's real path (no path in the name)."""
    return sha.sha256(os.fsencode(os.path.realpath(workspace))).hexdigest()[:16]


def project_folder(data_dir: Path, workspace: Path) -> Path:
    return data_dir / CACHES / key(workspace)


def usual_path(tool: Tool, home: Path, environ: Mapping[str, str]) -> Path:
    """Where the tool looks by default on Linux: the user's own variable, XDG, or the home."""
    own = environ.get(tool.env or "") or environ.get((tool.env or "").upper())
    if own and os.path.isabs(own):
        return Path(own)
    if tool.path.startswith(".cache/"):
        return cache_home(home, environ) / tool.path.removeprefix(".cache/")
    return home / tool.path


def cache_home(home: Path, environ: Mapping[str, str]) -> Path:
    xdg = environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else home / ".cache"


def prepare(data_dir: Path, workspace: Path, now: float | None = None) -> Path:
    """The project's cache folder, made private, with its tool folders and `used` stamp."""
    ensure_private_dir(data_dir / CACHES)
    folder = ensure_private_dir(project_folder(data_dir, workspace))
    marker = folder / WORKSPACE_FILE
    real = os.path.realpath(workspace)
    if not marker.is_file() or marker.read_bytes() != os.fsencode(real):
        _write_private(marker, real)
    used = folder / USED_FILE
    if not used.exists():
        _write_private(used, "")
    os.utime(used, None if now is None else (now, now))
    for tool in TOOLS:
        sub = folder / tool.name
        with contextlib.suppress(FileExistsError):
            sub.mkdir(mode=DIR_MODE)
    return folder


def _write_private(path: Path, text: str) -> None:
    """`text` as the file system's bytes (a workspace path need not be UTF-8)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(os.fsencode(text))


def apply(
    spec: SandboxSpec,
    *,
    folder: Path,
    home: Path,
    environ: Mapping[str, str],
    mounts: bool,
) -> SandboxSpec:
    """The spec with the project's caches in `folder` (made by `prepare`): mounted at the
    usual paths where they exist (`mounts`), else named by the tools' variables. A root krate
    running the workload as the workspace's owner gets none (that user cannot reach root's
    data folder)."""
    from krate.sandbox.spec import Bind  # loaded by the run already; `data where` needs none

    if spec.run_as is not None:
        return spec
    if not mounts:
        env = dict(spec.env)
        extra = []
        for tool in TOOLS:
            mine = usual_path(tool, home, environ)  # the user's own variable, when set
            if tool.env is not None and _place(mine, spec) != LEAVE:
                env[tool.env] = str(folder / tool.name)
                extra.append(folder / tool.name)
        return spec._replace(
            env=env,
            writable=(*spec.writable, *extra),
            declared_writable=(*(spec.declared_writable or spec.writable), *extra),
        )
    binds, env = [], dict(spec.env)
    for tool in TOOLS:
        dest = usual_path(tool, home, environ)
        where = _place(dest, spec)
        if where == MOUNT:
            binds.append(Bind(folder / tool.name, dest, writable=True))
        elif where == REDIRECT and tool.env is not None:
            inside = Path(spec.tmpdir) / INSIDE / tool.name
            binds.append(Bind(folder / tool.name, inside, writable=True))
            env[tool.env] = str(inside)
    return spec._replace(extra_binds=(*spec.extra_binds, *binds), env=env)


MOUNT, REDIRECT, LEAVE = "mount", "redirect", "leave"
# Under the sandbox's private /tmp: where the cache goes when its usual folder is missing.
INSIDE = ".krate-cache"


def _place(dest: Path, spec: SandboxSpec) -> str:
    """MOUNT at `dest` (a folder on the host, outside every other rule); LEAVE it (in a
    writable folder: the user's own choice; or hidden); else REDIRECT the tool's variable.

    bubblewrap can only mount onto a path that exists, and krate never creates one in the
    user's home: the run leaves the host as it was.
    """
    from krate.sandbox.spec import PRIVATE_TMP, SOCKET_DIRS, is_within

    writable = {*spec.writable, *spec.declared_writable}
    if any(is_within(dest, w) or is_within(w, dest) for w in writable):
        return LEAVE
    if any(is_within(dest, h) for h in spec.hidden):
        return LEAVE
    covered = [Path(PRIVATE_TMP), *map(Path, SOCKET_DIRS)]
    if any(is_within(dest, c) for c in covered):
        return REDIRECT
    return MOUNT if os.path.isdir(dest) and not os.path.islink(dest) else REDIRECT


def listing(data_dir: Path) -> list[tuple[Path, str, float]]:
    """(folder, workspace path, last used) for each project's caches; links are skipped."""
    base = data_dir / CACHES
    out = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return out
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        try:
            workspace = _read_nofollow(folder / WORKSPACE_FILE)
            used = os.lstat(folder / USED_FILE).st_mtime
        except OSError:
            workspace, used = "", 0.0
        out.append((folder, workspace, used))
    return out


def _read_nofollow(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return os.fsdecode(f.read(4096))


def remove(folder: Path) -> None:
    """Remove a project's caches without following any link in them.

    Go leaves its module cache read-only (0555 folders): such a folder is made
    writable through a descriptor opened without following links, then emptied.
    """
    import shutil
    import sys

    def retry(function: object, path: str, _exc: object) -> None:
        fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, DIR_MODE)
        finally:
            os.close(fd)
        function(path)  # type: ignore[operator]

    if not os.path.isdir(folder) or os.path.islink(folder):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=retry)
    else:
        shutil.rmtree(folder, onerror=retry)
