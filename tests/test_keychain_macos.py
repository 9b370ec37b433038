"""A locked macOS keychain over SSH (-25308) names `security unlock-keychain`.

keyring's macOS backend cannot load on Linux (its api module binds Security.framework with
ctypes at import), so the backend here is a fake that raises exactly what keyring 25's
`keyring/backends/macOS/__init__.py` raises: its api.Error(status, "Unknown Error") for a
status it has no name for, re-raised as KeyringError / PasswordSetError / PasswordDeleteError
"from" it. Not covered: that macOS really answers -25308 over SSH (the Security framework's
behaviour, documented by Apple and seen by keyring's users), and the real backend's text
should a later keyring name the status; only a Mac can show either.
"""

from __future__ import annotations

import os
import textwrap

import pytest
from keyring.errors import KeyringError, PasswordDeleteError, PasswordSetError

from krate.errors import KrateError
from krate.registry.keychain import Credentials, Keychain

from .conftest import run_krate


class ApiError(Exception):
    """keyring.backends.macOS.api.Error: args are (status, text)."""


def raising(wrapper, prefix):
    def fn(*_args):
        try:
            raise ApiError(-25308, "Unknown Error")
        except ApiError as e:
            raise wrapper(f"{prefix}: {e}") from e

    return fn


class LockedMac:
    """What keyring's macOS Keyring does when the keychain cannot prompt (SSH, screen)."""

    get_password = staticmethod(raising(KeyringError, "Can't get password from keychain"))
    set_password = staticmethod(raising(PasswordSetError, "Can't store password on keychain"))
    delete_password = staticmethod(
        raising(PasswordDeleteError, "Can't delete password in keychain")
    )


HINT = (
    "it is locked, and macOS cannot show its unlock prompt in this session (error -25308: "
    "SSH and screen/tmux sessions cannot); run `security unlock-keychain`, then try again"
)


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("read", lambda kc: kc.get("ghcr.io")),
        ("store", lambda kc: kc.put("ghcr.io", Credentials("me", "hunter2-secret"))),
    ],
)
def test_a_keychain_that_cannot_prompt_says_to_unlock_it(what, call):
    kc = Keychain(LockedMac(), "keyring.backends.macOS.Keyring")
    with pytest.raises(KrateError) as caught:
        call(kc)
    message = str(caught.value)
    assert message == f"cannot {what} the credentials of ghcr.io in the macOS Keychain: {HINT}"
    assert "\n" not in message and "hunter2" not in message


def test_the_delete_path_says_it_too():
    class DeleteOnly(LockedMac):
        get_password = staticmethod(lambda *_: '{"username": "me", "password": "p"}')

    kc = Keychain(DeleteOnly(), "keyring.backends.macOS.Keyring")
    with pytest.raises(
        KrateError, match="^cannot remove the credentials of ghcr.io .*`security unlock-keychain`"
    ):
        kc.delete("ghcr.io")


def test_other_keychain_errors_keep_their_own_message():
    class Denied:
        def get_password(self, *_):
            raise KeyringError("Can't get password from keychain: (-128, 'Keychain Access Denied')")

    kc = Keychain(Denied(), "keyring.backends.macOS.Keyring")
    with pytest.raises(KrateError) as caught:
        kc.get("ghcr.io")
    assert "security unlock-keychain" not in str(caught.value)
    assert "-128" in str(caught.value)


FAKE_BACKEND = textwrap.dedent(
    '''
    """A keyring backend raising as keyring's macOS backend does for -25308."""
    from keyring.backend import KeyringBackend
    from keyring.errors import KeyringError

    class Error(Exception):
        pass

    class Keyring(KeyringBackend):
        priority = 1

        def get_password(self, service, username):
            try:
                raise Error(-25308, "Unknown Error")
            except Error as e:
                raise KeyringError(f"Can't get password from keychain: {e}") from e

        def set_password(self, service, username, password):
            raise AssertionError("not reached")

        def delete_password(self, service, username):
            raise AssertionError("not reached")
    '''
)


def test_krate_logout_over_ssh_prints_one_line_and_exits_1(tmp_path, krate_home):
    (tmp_path / "lockedmac.py").write_text(FAKE_BACKEND)
    env = dict(
        os.environ,
        PYTHONPATH=str(tmp_path),
        PYTHON_KEYRING_BACKEND="lockedmac.Keyring",
        SSH_CONNECTION="192.0.2.1 50000 192.0.2.2 22",
    )
    out = run_krate("logout", "ghcr.io", env=env)
    assert out.returncode == 1, out.stderr
    assert out.stderr == (
        "krate: cannot read the credentials of ghcr.io in the keyring backend "
        f"lockedmac.Keyring: {HINT}\n"
    )
    assert "Traceback" not in out.stderr
