"""Which keychain entries krate made, and removing them when the user's data is purged.

krate keeps no list of its keychain entries besides its own record: the accounts
are read from `credential.stored` / `credential.removed` events (service "krate").
Names only, never secrets. The removal itself is passed in by the caller (the
`krate data` commands remove through krate.registry.keychain, whose backend depends
on the environment); `remove_entries`, the default used by the automatic purge at
start-up, removes through the backend `configure()` named, and nothing until then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from krate.registry.backend_name import SERVICE


@dataclass(frozen=True)
class KeychainEntry:
    service: str
    account: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Remover = Callable[[Sequence[KeychainEntry]], list[KeychainEntry]]


def entries_in(db_path: Path) -> list[KeychainEntry]:
    """Entries recorded in the database at `db_path` (live or pending deletion); [] if none."""
    if not db_path.is_file():
        return []
    from krate.store import inventory

    try:
        conn = inventory.open_readonly(db_path)
    except Exception:  # an unreadable database names no accounts; purge still proceeds
        return []
    try:
        return [KeychainEntry(SERVICE, name) for name in inventory.credential_accounts(conn)]
    except Exception:
        return []
    finally:
        conn.close()


_backend: str | None = None


def configure(backend: str | None) -> None:
    """Name the keyring backend for the default remover (the CLI entry passes its
    environment's, so the automatic purge at start-up removes entries too)."""
    global _backend
    _backend = backend


def remove_entries(entries: Sequence[KeychainEntry]) -> list[KeychainEntry]:
    """The default remover: through the configured backend; nothing when none is configured.

    Failures never stop a purge (the files must go regardless); returns those removed.
    """
    if _backend is None or not entries:
        return []
    from krate.registry.keychain import delete_entry

    removed = []
    for entry in entries:
        try:
            if delete_entry(_backend, entry.account):
                removed.append(entry)
        except Exception:  # noqa: BLE001 - a keychain problem must not keep deleted data alive
            continue
    return removed
