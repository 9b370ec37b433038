"""Counted nouns read right at 1: "1 folder or file", "1 event", never "1 folders and files"."""

from __future__ import annotations

from krate.doctor import check_permissions
from krate.paths import Paths
from krate.plural import counted
from tests.conftest import run_krate


def test_counted_picks_the_noun_for_the_number():
    assert counted(0, "event") == "0 events"
    assert counted(1, "event") == "1 event"
    assert counted(2, "folder or file", "folders and files") == "2 folders and files"
    assert counted(1, "folder or file", "folders and files") == "1 folder or file"


def test_doctor_on_an_empty_data_folder_says_one_folder_or_file(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)  # the folder itself is all there is
    check = check_permissions(Paths(home, home))
    assert check.detail.startswith("1 folder or file, all private"), check.detail


def test_audit_verify_and_doctor_after_one_event_say_one_event(krate_home):
    assert run_krate("audit", "note", "only one").returncode == 0
    verified = run_krate("audit", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("1 event, chain intact"), (
        verified.stdout
    )
    doctor = run_krate("doctor")
    assert "1 events" not in doctor.stdout and "1 folders" not in doctor.stdout
