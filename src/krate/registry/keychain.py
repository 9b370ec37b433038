"""Which keyring backend krate uses, chosen explicitly per platform.

Naming it needs no import of keyring (about 0.1 s and, on Linux, a burst of
subprocesses during auto-detection); only login/push/logout load keyring itself.
PYTHON_KEYRING_BACKEND, keyring's standard override, is honoured and reported.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

SERVICE = "krate"
_PLATFORM_BACKENDS = {
    "darwin": "keyring.backends.macOS.Keyring",
    "linux": "keyring.backends.SecretService.Keyring",
}


def backend_name(environ: Mapping[str, str], platform: str = sys.platform) -> str:
    override = environ.get("PYTHON_KEYRING_BACKEND")
    if override:
        return override
    key = "linux" if platform.startswith("linux") else platform
    return _PLATFORM_BACKENDS.get(key, "keyring.backends.fail.Keyring")
