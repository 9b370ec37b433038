"""A copy of the chain's newest head kept beside krate.db, so that cutting the store back shows.

`krate.head` (0600, in the data folder) holds one fixed-width line,
`krate-head/1 <seq, 20 digits> <hash>`. Every write transaction advances it
right after its COMMIT (`advance`); `krate audit verify` compares it with the
verified chain (`compare`). No library keeps such a file, hence this module.

- After COMMIT, never before: the copy may lag the database (a krate killed
  between the two steps), never lead it. `compare` accepts a copy that names
  the newest event or an older event of the chain; anything else fails.
- Updated in place, one pwrite under flock (LOCK_EX; readers take LOCK_SH):
  a temporary file and a rename cost ~150 µs per write on ext4, this ~5 µs,
  readers never see half a line, and concurrent writers never move it
  backwards (each writes only a head newer than the copy's). A lock held for
  seconds (not krate's way) is given up on, never waited for forever.
- Never overwritten when it names an event the database does not hold: that
  is the evidence of an emptied, replaced or rolled-back store, kept until the
  user moves the file aside.
- Opened once per store, relative to the data folder the store was opened in (a directory fd),
  so a `krate data delete` that renames the folder during a run keeps the copy
  beside its own database.
- Not fsync'd, like the database's own commits (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path

from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.store.events import Head

NAME = "krate.head"
MAGIC = "krate-head/1"
SIZE = len(MAGIC) + 1 + 20 + 1 + 64 + 1
ABSENT = "absent"
DAMAGED = "damaged"
_HEX = frozenset("0123456789abcdef")
LOCK_WAIT_S = 2.0
_CHECKPOINT = "chain.checkpoint"
_YOURSELF = (
    " (if you did this yourself, e.g. restored a backup of krate.db alone, "
    f"move {NAME} aside to accept the record as it is now)"
)


class Copy(NamedTuple):
    seq: int
    hash: str


def encode(seq: int, digest: str) -> bytes:
    return f"{MAGIC} {seq:020d} {digest}\n".encode()


def parse(raw: bytes) -> Copy | str:
    """The copy in `raw`; ABSENT for an empty file, DAMAGED for anything but one exact line."""
    if not raw:
        return ABSENT
    try:
        magic, seq, digest = raw.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return DAMAGED
    digest = digest.removesuffix("\n")
    if (
        len(raw) != SIZE
        or magic != MAGIC
        or not (len(seq) == 20 and seq.isdigit())
        or not (len(digest) == 64 and set(digest) <= _HEX)
    ):
        return DAMAGED
    return Copy(int(seq), digest)


def read(path: Path) -> Copy | str:
    """The copy at `path`: Copy, ABSENT (no file, or empty) or DAMAGED (unreadable, not krate's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return ABSENT
    except OSError:
        return DAMAGED
    try:
        _lock(fd, fcntl.LOCK_SH)  # unlocked after the wait: a torn line then reads as damaged
        raw = os.pread(fd, SIZE + 1, 0)
    except OSError:
        return DAMAGED
    finally:
        os.close(fd)
    return parse(raw)  # empty: created by a writer that has not written yet, like no file


def event_hash(conn: sqlite3.Connection, seq: int) -> str | None:
    """The hash the chain holds for event `seq`: its own, or, when a prune removed exactly
    that event as the last one, the hash the newest checkpoint says the kept events follow."""
    row = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
    if row is not None:
        return row[0]
    from krate.store.events import checkpoint_start

    checkpoint = conn.execute(
        "SELECT data FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1", (_CHECKPOINT,)
    ).fetchone()
    start = checkpoint_start(checkpoint[0]) if checkpoint else None
    if start is not None and start[0] == seq + 1:
        return start[1]
    return None


def open_copy(dir_fd: int) -> int | None:
    """The copy in the folder `dir_fd` names, opened (created 0600) for `advance`; None when
    the folder was purged or is unusable (nothing to keep in step then)."""
    try:
        fd = os.open(
            NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
    except OSError:
        return None
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    except OSError:
        pass
    return fd


def advance(fd: int, conn: sqlite3.Connection, start: Head | None, new: Head) -> None:
    """Write `new` (just committed) as the copy, unless the copy is newer or is evidence.

    `start` is the head the transaction began from: a copy equal to it needs no lookup.
    Never raises: the transaction is committed, and a copy left behind is reported by verify.
    """
    try:
        if not _lock(fd, fcntl.LOCK_EX):
            return  # held for seconds by someone else: leave the copy behind rather than hang
        try:
            current = parse(os.pread(fd, SIZE + 1, 0))
            if _replaceable(conn, current, start, new):
                os.pwrite(fd, encode(new.seq, new.hash), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    except (OSError, sqlite3.Error):
        pass


def _lock(fd: int, how: int) -> bool:
    """flock without ever hanging: krate holds it for microseconds; give up after LOCK_WAIT_S."""
    deadline = None
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            now = time.monotonic()
            deadline = deadline or now + LOCK_WAIT_S
            if now > deadline:
                return False
            time.sleep(0.001)


def _replaceable(
    conn: sqlite3.Connection, current: Copy | str, start: Head | None, new: Head
) -> bool:
    if current == ABSENT:
        return True
    if current == DAMAGED or not isinstance(current, Copy) or current.seq >= new.seq:
        return False
    if start is not None and current == (start.seq, start.hash):
        return True
    return event_hash(conn, current.seq) == current.hash


class Comparison(NamedTuple):
    ok: bool
    state: str  # absent | matches | behind | ahead | differs | damaged | unchecked
    copy: Copy | None
    reason: str

    def to_dict(self, path: Path) -> dict:
        return {
            "path": str(path),
            "state": self.state,
            "seq": self.copy.seq if self.copy else None,
            "hash": self.copy.hash if self.copy else None,
        }


def compare(conn: sqlite3.Connection, copy: Copy | str, head: Head, first_seq: int, path: Path):
    """What verify makes of the copy (read BEFORE the chain) against the verified chain.

    Accepted: no copy (a record older than copies, or one the user moved aside); a copy
    naming the newest event; a copy naming an older event of the chain, with its hash
    (it lags: a krate stopped between its commit and the copy). Everything else fails.
    """
    if copy == ABSENT:
        return Comparison(
            True,
            ABSENT,
            None,
            f"no head copy yet ({path}; the next recording writes it): until then an emptied "
            "or rolled-back store cannot be told from this one",
        )
    if not isinstance(copy, Copy):
        return Comparison(
            False,
            DAMAGED,
            None,
            f"the head copy {path} is damaged or not krate's; if the computer crashed "
            "while krate was writing it, move it aside (the next recording writes a new one)",
        )
    if copy.seq > head.seq:
        held = f"ends at event {head.seq}" if head.seq else "holds no events"
        return Comparison(
            False,
            "ahead",
            copy,
            f"the record {held} but its head copy {path} names event {copy.seq}: "
            "events were removed, the database was emptied or replaced, "
            f"or an older copy of it was put back{_YOURSELF}",
        )
    if copy.seq < first_seq - 1:
        return Comparison(
            False,
            "unchecked",
            copy,
            f"the head copy {path} names event {copy.seq}, which was pruned, so it cannot be "
            "checked; if krate was interrupted just before the prune, move the copy aside",
        )
    if event_hash(conn, copy.seq) != copy.hash:
        return Comparison(
            False,
            "differs",
            copy,
            f"event {copy.seq} is not the event the head copy {path} names: the record was "
            f"rewritten from event {copy.seq} or earlier, or replaced{_YOURSELF}",
        )
    if copy.seq == head.seq:
        return Comparison(True, "matches", copy, "head copy matches")
    behind = head.seq - copy.seq
    return Comparison(
        True,
        "behind",
        copy,
        f"head copy {behind} event{'s' if behind > 1 else ''} behind (a krate stopped between "
        "recording and updating it; the next recording brings it up to date)",
    )
