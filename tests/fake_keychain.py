"""A FAKE keychain standing in for the macOS Keychain in tests (this Linux machine has none).

A keyring backend selected the standard way, `PYTHON_KEYRING_BACKEND=
tests.fake_keychain.FakeKeychain` with the repository root on PYTHONPATH, so the
real `krate` executable loads it exactly as it would load the macOS backend. It
keeps entries in a JSON file named by KRATE_TEST_KEYCHAIN, deliberately outside
KRATE_HOME, so tests can assert that krate's own data folder never holds a secret.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError


class FakeKeychain(KeyringBackend):
    priority = 1  # never chosen by auto-detection; only when named

    def _file(self) -> Path:
        return Path(os.environ["KRATE_TEST_KEYCHAIN"])

    def _load(self) -> dict:
        try:
            return json.loads(self._file().read_text())
        except FileNotFoundError:
            return {}

    def _save(self, data: dict) -> None:
        path = self._file()
        path.write_text(json.dumps(data))
        path.chmod(0o600)

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}\0{username}"] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}\0{username}", None) is None:
            raise PasswordDeleteError("no such entry")
        self._save(data)
