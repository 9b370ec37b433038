"""Registry credentials in the OS keychain, through keyring, with the backend chosen explicitly.

krate keeps credentials nowhere else: not in the database, a config file, argv,
a child's environment, a log line or an error message. One keychain entry per
registry: service "krate", account = the registry (`ghcr.io`, `127.0.0.1:5000`),
secret = a small JSON object with the user name and password.

The backend is named per platform (macOS Keychain, Secret Service on Linux) or by
keyring's standard PYTHON_KEYRING_BACKEND override, and loaded directly instead of
letting keyring auto-detect (about 0.1 s and, on Linux, a burst of subprocesses
probing for macOS frameworks). `backend_name()` needs no import of keyring, so
`krate info` stays fast; keyring itself is imported only inside the functions
that use it (login, logout, push). Backends that would keep the secret in a plain
file, and keyring's "fail"/"null" placeholders, are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from krate.errors import KrateError
from krate.registry.backend_name import SERVICE as SERVICE  # callers import both here
from krate.registry.backend_name import backend_name as backend_name

_REFUSED = ("keyring.backends.fail.", "keyring.backends.null.")


def _install_hint(name: str) -> str:
    if name.endswith("SecretService.Keyring"):
        return (
            "on Linux, install and start a Secret Service provider in a D-Bus session "
            "(e.g. gnome-keyring, or KeePassXC with Secret Service integration), "
            "or set PYTHON_KEYRING_BACKEND to another keyring backend"
        )
    if name.endswith("macOS.Keyring"):
        return "unlock the login keychain (Keychain Access) and try again"
    return "set PYTHON_KEYRING_BACKEND to a keyring backend that works on this system"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


class Keychain:
    """One loaded keyring backend; every call names the registry, never logs the secret."""

    def __init__(self, backend: Any, name: str) -> None:
        self.backend = backend
        self.name = name

    @property
    def label(self) -> str:
        if self.name.endswith("macOS.Keyring"):
            return "macOS Keychain"
        if self.name.endswith("SecretService.Keyring"):
            return "Secret Service keyring"
        return f"keyring backend {self.name}"

    def get(self, registry: str) -> Credentials | None:
        return parse_entry(
            self._call("read", self.backend.get_password, SERVICE, registry), registry
        )

    def put(self, registry: str, credentials: Credentials) -> None:
        secret = json.dumps({"username": credentials.username, "password": credentials.password})
        self._call("store", self.backend.set_password, SERVICE, registry, secret)

    def delete(self, registry: str) -> bool:
        """True when an entry was removed; False when there was none."""
        if self._call("read", self.backend.get_password, SERVICE, registry) is None:
            return False
        self._call("remove", self.backend.delete_password, SERVICE, registry)
        return True

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # keyring's errors name no secret; we still print only the type
            if _interaction_not_allowed(exc):
                raise KrateError(
                    f"cannot {what} the credentials of {args[1]} in the {self.label}: it is "
                    "locked, and macOS cannot show its unlock prompt in this session (error "
                    f"{_NO_UI}: SSH and screen/tmux sessions cannot); run `security "
                    "unlock-keychain`, then try again"
                ) from None
            kind = type(exc).__name__
            detail = _first_line(exc, secret=args[-1] if what == "store" else None)
            raise KrateError(
                f"cannot {what} the credentials of {args[1]} in the {self.label} "
                f"({kind}{': ' + detail if detail else ''}); {_install_hint(self.name)}"
            ) from None


def parse_entry(raw: str | None, registry: str) -> Credentials | None:
    """An entry's secret (the JSON krate wrote) as Credentials; None for no entry."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return Credentials(str(doc["username"]), str(doc["password"]))
    except (ValueError, KeyError, TypeError):
        raise KrateError(
            f"the keychain entry for {registry} (service {SERVICE!r}) is not one krate "
            f"wrote; run `krate logout {registry}` then `krate login {registry}`"
        ) from None


_NO_UI = -25308  # errSecInteractionNotAllowed


def _interaction_not_allowed(exc: BaseException | None) -> bool:
    """True when the Security framework refused to show its unlock prompt (-25308).

    keyring's macOS backend raises its own api.Error(-25308, "Unknown Error") and re-raises
    it as a KeyringError (or PasswordSetError/PasswordDeleteError) "from" it: the status is
    in the cause's first argument, and in the message text.
    """
    for _ in range(5):
        if exc is None:
            return False
        if (exc.args[:1] == (_NO_UI,)) or str(_NO_UI) in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException, secret: str | None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if secret and (text in secret or secret in text):
        return ""
    return text[:160]


def open_keychain(name: str) -> Keychain:
    """Load the named backend (importing keyring now) or say clearly why there is none.

    Raises KrateError before anything is written anywhere.
    """
    if name.startswith(_REFUSED) or "plaintext" in name.lower():
        raise KrateError(
            f"keyring backend {name} does not keep secrets in an OS keychain; krate stores "
            f"registry credentials only there: {_install_hint(name)}. Nothing was stored."
        )
    try:
        from keyring.core import load_keyring

        backend = load_keyring(name)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise KrateError(
            f"keyring backend {name} cannot be loaded ({type(exc).__name__}: {exc}); "
            "check PYTHON_KEYRING_BACKEND. Nothing was stored."
        ) from None
    except Exception as exc:  # RuntimeError from the backend's viability check, D-Bus errors
        raise KrateError(
            f"no usable keychain: {name} is not available ({_first_line(exc, None)}); "
            f"{_install_hint(name)}. krate keeps registry credentials only in the OS "
            "keychain. Nothing was stored."
        ) from None
    return Keychain(backend, name)


def delete_entry(name: str, account: str) -> bool:
    """Remove krate's entry for `account` (a registry) through backend `name`.

    For `krate data delete` (privacy): True when removed, False when absent.
    """
    return open_keychain(name).delete(account)
