"""`krate run IMAGE`: the image a run uses, and what its config asks of the run.

On the run path, so light: no dataclasses, no sqlite-utils; the unpacker is imported only
when the image's root is not unpacked yet. `run` never pulls: an image that is not on this
machine is 125 with the exact command that would fetch it.

Like `docker run`: the image's Env is the environment (plus variables the user passed by
name, and the proxy's), Entrypoint + (CMD or the image's Cmd) the command, User the uid
inside the sandbox (root when none). Stricter than docker: the root stays read-only, only
/tmp, /var/tmp, /run and the user's home (when empty in the image) are throwaway
writable, and the workspace is mounted at /work, the working directory (docs/images.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from krate import sha
from krate.errors import EXIT_CANNOT_EXECUTE, EXIT_KRATE_FAILED, EXIT_NOT_FOUND, KrateError
from krate.images import inroot
from krate.images.model import parse_config
from krate.paths import Paths
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

WORK = "/work"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Host variables an image run keeps besides those passed by name (docker -t sets TERM too).
TERMINAL = ("TERM", "COLORTERM", "NO_COLOR")


class ImageRun(NamedTuple):
    ref: str
    config_digest: str
    manifest_digest: str | None
    rootfs: Path
    config: dict[str, Any]
    uid: int
    gid: int
    home: str
    # Where a root krate's sandbox, run as the workspace owner, finds `rootfs` (a private
    # bind mount: sandbox/image_stage.py); None: at `rootfs` itself.
    stage: Path | None = None

    def record(self) -> dict[str, Any]:
        """For run.started and the build record: the image by name and digests."""
        out = {"ref": self.ref, "config": self.config_digest}
        if self.manifest_digest:
            out["manifest"] = self.manifest_digest
        return out


def missing(name: str) -> KrateError:
    return KrateError(
        f"no image {name} on this machine (`krate run` never pulls); "
        f"run `krate image pull {name}` or `krate image import PATH` first",
        exit_code=EXIT_KRATE_FAILED,
    )


def open_for_run(paths: Paths, name: str) -> ImageRun:
    """The image `name` names, unpacked, with its config read back through its digest."""
    from krate.images import names
    from krate.store import open_store

    try:
        with open_store(paths, readonly=True) as store:
            row = names.find(store, name)
    except KrateError as exc:
        exc.exit_code = EXIT_KRATE_FAILED
        raise
    if row is None:
        raise missing(name)
    raw = _config_blob(paths, row.config_digest, name)
    try:
        config, _, _ = parse_config(raw)
    except ValueError as exc:
        raise KrateError(f"image {name}: {exc}", exit_code=EXIT_KRATE_FAILED) from exc
    rootfs = _rootfs(paths, row)
    uid, gid, home = user_of(rootfs, config.get("User", ""), name)
    return ImageRun(row.ref, row.config_digest, row.manifest_digest, rootfs, config, uid, gid, home)


def _config_blob(paths: Paths, digest: str, name: str) -> bytes:
    hex_digest = digest.split(":", 1)[-1]
    try:
        fd = os.open(paths.artifacts_dir / "sha256" / hex_digest, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as reader:
            raw = reader.read(16 << 20)
    except OSError:
        raw = b""
    if sha.sha256(raw).hexdigest() != hex_digest:
        raise KrateError(
            f"the config of image {name} ({digest}) is missing or changed in the store; "
            f"run `krate image verify {name}`",
            exit_code=EXIT_KRATE_FAILED,
        )
    return raw


def _rootfs(paths: Paths, row) -> Path:
    folder = paths.data_dir / "images" / "roots" / row.config_digest.split(":", 1)[-1]
    if (folder / "meta.json").is_file() and (folder / "rootfs").is_dir():
        return folder / "rootfs"
    from krate.images import roots
    from krate.images.model import Image

    image = Image(row.ref, row.config_digest, row.manifest_digest, row.layers, {}, None)
    try:
        return roots.ensure(paths, image)
    except KrateError as exc:
        exc.exit_code = EXIT_KRATE_FAILED
        raise


def _entries(text: str | None) -> list[list[str]]:
    return [line.split(":") for line in (text or "").splitlines() if line and line[0] != "#"]


def user_of(rootfs: Path, user: str, name: str) -> tuple[int, int, str]:
    """(uid, gid, home) for the image's `User` ("", "name", "uid", "name:group", "uid:gid")."""
    who, _, group = user.partition(":")
    passwd = _entries(inroot.read_text(rootfs, "/etc/passwd"))
    uid, gid, home = 0, 0, None
    if who:
        match = [e for e in passwd if len(e) >= 6 and (e[0] == who or e[2] == who)]
        if match:
            uid, gid, home = int(match[0][2]), int(match[0][3]), match[0][5]
        elif who.isdigit():
            uid = int(who)
        else:
            raise KrateError(
                f"image {name} runs as user {who!r}, which its /etc/passwd does not name",
                exit_code=EXIT_KRATE_FAILED,
            )
    else:
        root = [e for e in passwd if len(e) >= 6 and e[2] == "0"]
        home = root[0][5] if root else "/root"
    if group:
        groups = _entries(inroot.read_text(rootfs, "/etc/group"))
        match = [e for e in groups if len(e) >= 3 and (e[0] == group or e[2] == group)]
        if match:
            gid = int(match[0][2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise KrateError(
                f"image {name} runs as group {group!r}, which its /etc/group does not name",
                exit_code=EXIT_KRATE_FAILED,
            )
    if not home or not home.startswith("/") or not _is_dir(rootfs, home):
        home = "/"
    return uid, gid, home


def _is_dir(rootfs: Path, path: str) -> bool:
    found = inroot.lookup(rootfs, path)
    return found is not None and stat.S_ISDIR(found[0].st_mode)


def argv_for(image: ImageRun, command: tuple[str, ...]) -> tuple[str, ...]:
    """Entrypoint + (the command given, or the image's Cmd), as docker run builds it."""
    entry = list(image.config.get("Entrypoint") or [])
    rest = list(command) or list(image.config.get("Cmd") or [])
    argv = tuple(entry + rest)
    if not argv:
        raise KrateError(
            f"image {image.ref} has no Entrypoint or Cmd: give the command after `--`",
            exit_code=EXIT_KRATE_FAILED,
        )
    return argv


def env_for(
    image: ImageRun, scrubbed: Mapping[str, str], passed: Callable[[str], bool]
) -> dict[str, str]:
    """The image's Env, HOME when it sets none, then host variables passed by name (as
    `docker run -e NAME`) and the terminal's; secrets were stripped from `scrubbed` already."""
    env: dict[str, str] = {}
    for item in image.config.get("Env") or []:
        key, _, value = item.partition("=")
        if key:
            env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", image.home)
    for key, value in scrubbed.items():
        if key in TERMINAL or (key != "PATH" and passed(key)):
            env[key] = value
    return env


def inside(spec_cwd: Path, workspace: Path) -> str:
    """Where the host folder `spec_cwd` is inside the sandbox (the workspace is /work)."""
    try:
        rel = spec_cwd.relative_to(workspace)
    except ValueError:
        return WORK
    return WORK if str(rel) == "." else f"{WORK}/{rel}"


def find_command(image: ImageRun, argv0: str, path_env: str | None, cwd: str,
                 workspace: Path) -> str:  # fmt: skip
    """126/127 before launching, as the image's sandbox will see the command."""
    if not argv0:
        raise KrateError("no command given", exit_code=EXIT_NOT_FOUND)
    if "/" in argv0:
        candidates = [argv0 if argv0.startswith("/") else f"{cwd}/{argv0}"]
    else:
        folders = [d or "." for d in (path_env or DEFAULT_PATH).split(":")]
        candidates = [f"{d if d.startswith('/') else cwd + '/' + d}/{argv0}" for d in folders]
    not_executable = None
    for candidate in candidates:
        st = _stat_inside(image, candidate, workspace)
        if st is None:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
        not_executable = not_executable or candidate
    if not_executable is not None:
        raise KrateError(
            f"cannot execute {not_executable}: not an executable file",
            exit_code=EXIT_CANNOT_EXECUTE,
        )
    where = "" if "/" in argv0 else f" in the PATH of image {image.ref}"
    raise KrateError(f"command not found{where}: {argv0}", exit_code=EXIT_NOT_FOUND)


def _stat_inside(image: ImageRun, path: str, workspace: Path) -> os.stat_result | None:
    norm = os.path.normpath(path)
    if norm == WORK or norm.startswith(WORK + "/"):
        host = Path(str(workspace) + norm[len(WORK) :])
        try:
            return os.stat(host)
        except OSError:
            return None
    found = inroot.lookup(image.rootfs, norm)
    if found is None:
        return None
    resolved = found[1]
    if resolved == WORK or resolved.startswith(WORK + "/"):
        return _stat_inside(image, resolved, workspace)
    return found[0]
