"""A keyring backend that notes when krate loads and reads it (tests: who touches the keychain).

Named by PYTHON_KEYRING_BACKEND=keyring_probe.Keyring with tests/ on PYTHONPATH. Each
event is a line in the file KRATE_TEST_KEYRING_MARK: `loaded` when the module is
imported, `get <account>` per read. A read answers KRATE_TEST_KEYRING_SECRET (what
krate stores: {"username", "password"} as JSON), or raises when KRATE_TEST_KEYRING_FAIL.
"""

from __future__ import annotations

import os

from keyring.backend import KeyringBackend
from keyring.errors import KeyringError


def _mark(event: str) -> None:
    with open(os.environ["KRATE_TEST_KEYRING_MARK"], "a") as fh:
        fh.write(event + "\n")


_mark("loaded")


class Keyring(KeyringBackend):
    priority = 1

    def get_password(self, service: str, username: str) -> str | None:
        _mark(f"get {username}")
        if os.environ.get("KRATE_TEST_KEYRING_FAIL"):
            raise KeyringError("the probe keychain is locked")
        return os.environ.get("KRATE_TEST_KEYRING_SECRET")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeyringError("the probe keychain is read-only")

    def delete_password(self, service: str, username: str) -> None:
        raise KeyringError("the probe keychain is read-only")
