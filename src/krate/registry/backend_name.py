"""krate's keychain service and the keyring backend it uses, without keychain.py or keyring.

`krate info` and `krate data where` show them on every call; keychain.py (dataclasses,
~5 ms) is for the commands that read or write credentials.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

SERVICE = "krate"
_PLATFORM_BACKENDS = {
    "darwin": "keyring.backends.macOS.Keyring",
    "linux": "keyring.backends.SecretService.Keyring",
}
_FAIL = "keyring.backends.fail.Keyring"


def backend_name(environ: Mapping[str, str], platform: str = sys.platform) -> str:
    override = environ.get("PYTHON_KEYRING_BACKEND")
    if override:
        return override
    key = "linux" if platform.startswith("linux") else platform
    return _PLATFORM_BACKENDS.get(key, _FAIL)
