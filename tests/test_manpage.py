"""The manual page is generated from the CLI (scripts/gen-man) and must not go stale."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "man" / "krate.1"


def test_committed_man_page_is_current(tmp_path):
    fresh = tmp_path / "krate.1"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-man"), "--out", str(fresh)],
        check=True,
        capture_output=True,
    )
    assert PAGE.read_text() == fresh.read_text(), "docs/man/krate.1 is stale: run scripts/gen-man"


def test_man_page_documents_every_command_and_renders(tmp_path):
    text = PAGE.read_text()
    for section in ('.SS "krate doctor"', '.SS "krate audit verify"', ".SH EXIT STATUS"):
        assert section in text
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed here")
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(PAGE)], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
