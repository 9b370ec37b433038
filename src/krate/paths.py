"""Where krate keeps its data and configuration, and how they are kept private.

`KRATE_HOME` replaces both folders with one (tests and portable installs use it);
otherwise the platform's convention decides: on Linux and macOS the rule of
platformdirs (XDG_DATA_HOME / XDG_CONFIG_HOME when absolute, else ~/.local/share
and ~/.config, or ~/Library/Application Support), written out here because
`krate run` needs these folders before its network lockdown, when no third-party
package may be imported (tests pin the folders per platform). Folders are
created 0700 and files 0600 whatever the umask, because the store holds a record
of the user's activity.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from krate.errors import StoreError
from krate.records import NamedTuple

APP = "krate"
DB_NAME = "krate.db"
DIR_MODE = 0o700
FILE_MODE = 0o600


class Paths(NamedTuple):
    data_dir: Path
    config_dir: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        home = env.get("KRATE_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(data_dir=root, config_dir=root)
        if sys.platform.startswith("linux") or sys.platform == "darwin":
            mac = sys.platform == "darwin"
            data = _xdg(
                env, "XDG_DATA_HOME", "Library/Application Support" if mac else ".local/share"
            )
            config = _xdg(
                env, "XDG_CONFIG_HOME", "Library/Application Support" if mac else ".config"
            )
            return cls(data_dir=data / APP, config_dir=config / APP)
        import platformdirs

        return cls(
            data_dir=Path(platformdirs.user_data_dir(APP, appauthor=False)),
            config_dir=Path(platformdirs.user_config_dir(APP, appauthor=False)),
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def image_roots(self) -> Path:
        """Unpacked images, keyed by config digest (derived from the blobs, images/roots.py)."""
        return self.data_dir / "images" / "roots"

    @property
    def egress_journals(self) -> Path:
        """Decisions of runs in progress; a killed run's are recorded by the next run."""
        return self.data_dir / "egress"

    @property
    def user_policy(self) -> Path:
        return self.config_dir / "policy.toml"


def _xdg(env: Mapping[str, str], variable: str, default: str) -> Path:
    """An XDG base folder: the variable when it is an absolute path, else under the home."""
    value = env.get(variable, "")
    if os.path.isabs(value):
        return Path(value)
    home = env.get("HOME", "")
    if not os.path.isabs(home):
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    return Path(home.rstrip("/") or "/") / default


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed; leave it 0700 and usable, or say why not."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if not path.is_dir():
            raise StoreError(f"{path} exists but is not a folder; move it aside or set KRATE_HOME")
        if path.stat().st_mode & 0o777 != DIR_MODE:
            os.chmod(path, DIR_MODE)
    except PermissionError as exc:
        raise StoreError(
            f"cannot use data folder {path}: permission denied; "
            "fix its permissions or set KRATE_HOME to a writable folder"
        ) from exc
    except FileExistsError as exc:
        raise StoreError(
            f"{path} exists but is not a folder; move it aside or set KRATE_HOME"
        ) from exc
    except OSError as exc:
        raise StoreError(
            f"cannot use data folder {path}: {(exc.strerror or str(exc)).lower()}; "
            "fix it or set KRATE_HOME to a writable folder"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(
            f"data folder {path} is not writable; fix its permissions or set KRATE_HOME"
        )
    return path


def make_private_file(path: Path) -> None:
    """Ensure an existing file is 0600 (SQLite creates files honouring the umask)."""
    try:
        if path.exists() and path.stat().st_mode & 0o777 != FILE_MODE:
            os.chmod(path, FILE_MODE)
    except OSError as exc:
        raise StoreError(f"cannot set permissions on {path}: {exc.strerror or exc}") from exc
