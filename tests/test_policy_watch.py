"""The krate.toml watch listed ahead (policy/watch.py `Watch`): while the workload runs, a
thread lists the writable folders; afterwards only folders that changed are listed again.

The walk after the run is the reference: whatever a workload does between the listing
ahead and the end (write a new krate.toml deep down, change one in place and set every
time it can back, replace a folder by another holding a changed file, swap a folder for a
symbolic link, rename a tree away and back), `finish()` must report exactly what the full
walk reports. The random test plays hundreds of such moves at random points of the
listing. A separate test checks the point of it all: an unchanged tree is not listed
again, only stat'ed.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

from krate.policy import watch


@pytest.fixture(autouse=True)
def no_delay(monkeypatch):
    """The thread's wait before it lists (AHEAD_AFTER_S) is tested on its own below."""
    monkeypatch.setattr(watch, "AHEAD_AFTER_S", 0)


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def ahead(roots, since, stop_after: int | None = None) -> watch.Watch:
    """A Watch that listed ahead, in this thread, all folders or only `stop_after`."""
    w = watch.Watch(roots, since)
    step(w, stop_after)
    return w


def step(w: watch.Watch, folders: int | None) -> None:
    """List ahead (as the thread does) `folders` more folders, or all that are left."""
    w.halt.clear()
    if folders is None:
        w._list_ahead()
        return
    real = w._list_open
    count = [0]

    def counted(folder):
        count[0] += 1
        if count[0] >= folders:
            w.halt.set()
        return real(folder)

    w._list_open = counted
    try:
        w._list_ahead()
    finally:
        w._list_open = real


@pytest.fixture
def tree(tmp_path):
    """A workspace with krate.toml files written before the run, and `since`."""
    ws = tmp_path / "ws"
    for sub in ("a/b/c", "a/d", "e/f", "node_modules/x/lib", "node_modules/y"):
        (ws / sub).mkdir(parents=True)
    write(ws / "krate.toml", "# the project's\n")
    write(ws / "a/b/krate.toml", "# narrowing\n")
    write(ws / "node_modules/x/krate.toml")
    write(ws / "e/f/readme.txt", "text\n")
    outside = tmp_path / "outside"
    write(outside / "krate.toml")
    return ws, outside, start_after(tmp_path)  # every file above is older than the start


def start_after(root: Path) -> int:
    """The run's start: a clock() reading later than every ctime under `root` (the coarse
    clock stamps a whole tick alike, so files written just before share it)."""
    latest = max(os.lstat(p).st_ctime_ns for p in [root, *root.rglob("*")])
    since = watch.clock()
    while since <= latest:
        since = watch.clock()
    return since


def reference(ws: Path, since: int) -> list[str]:
    return watch.written_since([ws], since).paths


def test_the_moves_a_workload_can_make_after_the_listing_are_all_found(tree):
    ws, outside, since = tree
    w = ahead([ws], since)
    assert w.pending == [] and str(ws / "a/b/c") in w.listed

    new_deep = write(ws / "a/b/c/krate.toml", "[network]\n")  # a new file in a listed folder
    in_place = ws / "a/b/krate.toml"
    in_place.write_text('[network]\nallow = ["*"]\n')  # changed in place: no folder changes
    os.utime(in_place, (0, 0))
    os.utime(in_place.parent, (0, 0))  # mtimes back to 1970: ctimes still say "now"
    new_tree = write(ws / "e/f/g/h/krate.toml")  # a new subtree
    # a listed folder replaced by another (moved in from elsewhere in the tree) that holds
    # a krate.toml changed in place before the move
    write(ws / "stash/x/krate.toml")
    os.utime(ws / "stash/x/krate.toml", (0, 0))
    shutil.rmtree(ws / "node_modules/x")
    os.rename(ws / "stash/x", ws / "node_modules/x")
    moved = ws / "node_modules/x/krate.toml"
    # a listed folder swapped for a link to a folder outside: never followed
    shutil.rmtree(ws / "a/d")
    (ws / "a/d").symlink_to(outside)
    named = write(ws / "node_modules/y/krate.toml/krate.toml")  # a folder of that name

    found = w.finish()
    expected = sorted(str(p) for p in (new_deep, in_place, new_tree, moved, named))
    assert found == watch.Written(expected, True)
    assert found.paths == reference(ws, since)
    assert str(outside / "krate.toml") not in found.paths


def test_a_tree_renamed_away_changed_and_renamed_back_is_found(tree):
    ws, _outside, since = tree
    w = ahead([ws], since)
    os.rename(ws / "a", ws / "away")
    (ws / "away/b/krate.toml").write_text("# changed while away\n")
    os.rename(ws / "away", ws / "a")
    found = w.finish()
    assert found.paths == [str(ws / "a/b/krate.toml")] == reference(ws, since)


def test_a_folder_listed_through_a_swapped_parent_is_not_trusted(tmp_path):
    """While the thread lists ahead, the workload swaps a parent folder for another whose
    child has the same name, lets the thread list that child, and swaps back: the listing
    under that path is of another folder. Its ctime says nothing (the real child was never
    touched); only its identity does."""
    ws = tmp_path / "ws"
    changed = write(ws / "x/a/krate.toml", "# before the run\n")
    since = start_after(ws)
    w = watch.Watch([ws], since)
    step(w, 2)  # ws and ws/x listed; ws/x/a next
    assert w.pending == [str(ws / "x/a")]
    os.rename(ws / "x", ws / "x2")
    (ws / "x/a").mkdir(parents=True)  # another folder at the same path, empty
    step(w, 1)
    shutil.rmtree(ws / "x")
    os.rename(ws / "x2", ws / "x")
    changed.write_text('[network]\nallow = ["*"]\n')  # changed in place: no folder changes
    assert w.finish().paths == [str(changed)] == reference(ws, since)


def test_a_folder_swapped_for_a_fifo_or_a_link_is_skipped_without_waiting(tree, tmp_path):
    """The thread opens each folder it found as a folder only: a FIFO put in its place
    (whose open would block until a writer came) or a link to one is refused at once."""
    ws, _outside, since = tree
    w = watch.Watch([ws], since)
    step(w, 1)  # ws listed; its folders pending
    shutil.rmtree(ws / "a")
    os.mkfifo(ws / "a")
    shutil.rmtree(ws / "e")
    os.mkfifo(tmp_path / "fifo")
    (ws / "e").symlink_to(tmp_path / "fifo")
    planted = write(ws / "node_modules/y/krate.toml")
    started = time.monotonic()
    step(w, None)
    assert time.monotonic() - started < 5
    assert w.finish().paths == [str(planted)] == reference(ws, since)


def test_a_listing_cut_short_is_finished_after_the_run(tree):
    ws, _outside, since = tree
    w = ahead([ws], since, stop_after=2)
    assert w.pending  # the thread did not get everywhere
    planted = write(ws / "node_modules/x/lib/krate.toml")
    (ws / "a/b/krate.toml").write_text("# changed\n")
    found = w.finish()
    assert found.paths == sorted([str(planted), str(ws / "a/b/krate.toml")])
    assert found.paths == reference(ws, since)


def listings_in_finish(w: watch.Watch) -> list[str]:
    """The folders `finish()` lists again (the ones it could not trust)."""
    listed: list[str] = []
    real = w._entries

    def spy(where):
        listed.append(where)
        return real(where)

    w._entries = spy
    return listed


def test_an_unchanged_tree_is_not_listed_again(tree):
    ws, _outside, since = tree
    w = ahead([ws], since)
    listed = listings_in_finish(w)
    assert w.finish() == watch.Written([], True)
    assert listed == []  # one stat per folder, no listing
    (ws / "e/f/new.txt").write_text("x")  # one folder changed: only it is listed again
    w2 = ahead([ws], since)
    os.remove(ws / "e/f/new.txt")
    listed = listings_in_finish(w2)
    assert w2.finish().paths == []
    assert listed == [str(ws / "e/f")]


def test_the_thread_lists_ahead_and_finish_waits_for_it(tree):
    ws, _outside, since = tree
    w = watch.Watch([ws], since)
    w.start()
    planted = write(ws / "a/d/krate.toml")
    assert w.finish().paths == [str(planted)]
    assert w.thread is not None and not w.thread.is_alive()


def test_a_run_shorter_than_the_delay_lists_nothing_ahead(tree, monkeypatch):
    ws, _outside, since = tree
    monkeypatch.setattr(watch, "AHEAD_AFTER_S", 5)
    w = watch.Watch([ws], since)
    w.start()
    planted = write(ws / "e/f/krate.toml")
    assert w.finish().paths == [str(planted)]  # finish() ended the wait at once
    assert w.listed == {} and not w.thread.is_alive()


def test_the_limit_still_says_the_check_stopped(tree):
    ws, _outside, since = tree
    w = watch.Watch([ws], since, limit=3)
    w._list_ahead()
    assert w.finish().complete is False


@pytest.mark.parametrize("seed", range(40))
def test_random_moves_at_random_points_agree_with_the_full_walk(tmp_path, seed):
    rng = random.Random(seed)
    ws = tmp_path / "ws"
    folders = [ws]
    for i in range(40):
        parent = rng.choice(folders)
        folder = parent / f"d{i}"
        folder.mkdir(parents=True)
        folders.append(folder)
        if rng.random() < 0.3:
            write(folder / "krate.toml")
    since = start_after(ws)

    def alive() -> list[Path]:
        return [p for p in ws.rglob("*") if p.is_dir() and not p.is_symlink()] + [ws]

    def move() -> None:
        kind = rng.randrange(6)
        places = alive()
        here = rng.choice(places)
        if kind == 0:
            write(here / "krate.toml", "# new or rewritten\n")
        elif kind == 1:
            files = [p for p in ws.rglob("krate.toml") if p.is_file() and not p.is_symlink()]
            if files:
                target = rng.choice(files)
                target.write_text("# in place\n")
                os.utime(target, (0, 0))
                os.utime(target.parent, (0, 0))
        elif kind == 2:
            (here / f"n{rng.randrange(10**6)}" / "m").mkdir(parents=True)
        elif kind == 3 and here != ws:
            dest = rng.choice([p for p in places if not str(p).startswith(str(here))])
            target = dest / f"r{rng.randrange(10**6)}"
            os.rename(here, target)
        elif kind == 4 and here != ws:
            shutil.rmtree(here)
        elif kind == 5 and here != ws:
            shutil.rmtree(here)
            here.symlink_to(tmp_path)

    w = watch.Watch([ws], since)
    for _ in range(3):  # moves before, between and after parts of the listing
        for _ in range(rng.randrange(0, 8)):
            move()
        step(w, rng.randrange(1, 20))
    for _ in range(rng.randrange(1, 8)):
        move()
    assert w.finish().paths == reference(ws, since)


def test_a_file_written_right_after_the_clock_is_never_older_than_it(tmp_path):
    """clock() is the clock the kernel stamps ctime with: on Linux the coarse one, which
    the time module does not name (time.time_ns() ran ahead of 99% of these files)."""
    early = 0
    for i in range(2000):
        now = watch.clock()
        path = tmp_path / f"f{i}"
        path.touch()
        early += path.stat().st_ctime_ns < now
    assert early == 0
