"""`sandbox-exec` is never found through PATH: only /usr/bin/sandbox-exec is used.

A `sandbox-exec` planted earlier on PATH (it would run every workload unconfined)
is neither chosen by `detect()` / `backend.choose()` nor executed by `krate doctor`.
Runs on Linux by asking for the darwin platform; it does not cover a real Mac,
where /usr/bin/sandbox-exec exists and is then chosen (the assertion on the
chosen path covers that it is the absolute one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from krate import doctor
from krate.errors import KrateError
from krate.sandbox import backend, detect, seatbelt


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    folder, marker = tmp_path / "bin", tmp_path / "planted-ran"
    folder.mkdir()
    exe = folder / "sandbox-exec"
    exe.write_text(f'#!/bin/sh\ntouch {marker}\nshift 3\nexec "$@"\n')
    exe.chmod(0o755)
    return folder, marker


def test_a_planted_sandbox_exec_on_path_is_not_chosen(planted):
    folder, _ = planted
    found = detect.detect(path=f"{folder}:/usr/bin:/bin", platform="darwin")
    assert found.executable in (None, seatbelt.SANDBOX_EXEC)
    assert found.available == Path(seatbelt.SANDBOX_EXEC).exists()
    if not found.available:
        with pytest.raises(KrateError) as refused:
            backend.choose(path=str(folder), platform="darwin")
        assert refused.value.exit_code == 125


def test_doctor_does_not_run_a_planted_sandbox_exec(planted):
    folder, marker = planted
    check = doctor.check_sandbox(f"{folder}:/usr/bin:/bin", "darwin")
    assert not marker.exists()
    assert str(folder) not in check.detail
