"""One of krate's keychain entries read from the Secret Service with secretstorage, not keyring.

Why: importing keyring costs some 50 ms of CPU on every authenticated `krate image pull`
and `krate push` (its backend base class pulls in jaraco.context, urllib.request,
http.client, email...), more than the read itself. secretstorage is the library
keyring's Secret Service backend reads with (installed with keyring on Linux), and
it is called here as that backend calls it: the default collection, the items whose
attributes are `{"username": account, "service": service}` (keyring's default
scheme), the first one's secret, over the same encrypted session.

Only the plain case is done here. Any other backend, keyring properties from the
environment (`KEYRING_PROPERTY_*`), a locked collection or item (which would need
an unlock prompt), a missing default collection or any error answers UNSURE, and
the caller goes through keyring, which prompts, explains or fails as it always did.
Writes and deletes always go through keyring. Nothing is kept: the secret goes to
the caller only.
"""

from __future__ import annotations

from collections.abc import Mapping

SECRET_SERVICE = "keyring.backends.SecretService.Keyring"
UNSURE = object()  # "ask keyring": not a value an entry can have


def usable(backend: str, environ: Mapping[str, str]) -> bool:
    """Whether keyring would read exactly as `lookup` does: its Secret Service backend,
    with no property set from the environment (scheme, preferred collection)."""
    return backend == SECRET_SERVICE and not any("KEYRING_PROPERTY_" in k for k in environ)


def lookup(backend: str, service: str, account: str, environ: Mapping[str, str]):
    """The entry's secret (str), None when there is none, or UNSURE (ask keyring)."""
    if not usable(backend, environ):
        return UNSURE
    try:
        return _lookup(service, account)
    except Exception:  # keyring says what is wrong, in krate's words (keychain.py)
        return UNSURE


def warm() -> None:
    """Make `lookup`'s first decryption cheap, touching no keychain: imports secretstorage
    and runs one AES-128-CBC decryption of zeros with a zero key through `cryptography`, as
    secretstorage decrypts a secret (its first use costs some 7 ms: the cipher's setup in
    OpenSSL). For the pull's preload thread, while the transport connects: no D-Bus
    connection, no session, nothing read."""
    import secretstorage  # noqa: F401  (what the read needs first)
    from cryptography.hazmat.backends import default_backend
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    decryptor = Cipher(algorithms.AES(bytes(16)), modes.CBC(bytes(16)), default_backend())
    decryptor = decryptor.decryptor()
    decryptor.update(bytes(16))
    decryptor.finalize()


def _lookup(service: str, account: str):
    from contextlib import closing

    import secretstorage

    with closing(secretstorage.dbus_init()) as bus:
        collection = secretstorage.Collection(bus)  # the "default" alias, as keyring's
        if collection.is_locked():
            return UNSURE  # keyring asks the user to unlock it
        for item in collection.search_items({"username": account, "service": service}):
            if item.is_locked():
                return UNSURE
            return item.get_secret().decode("utf-8")
    return None
