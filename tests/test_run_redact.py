"""argv redaction and credential shapes: what a run record may keep of a command line."""

from __future__ import annotations

import pytest

from krate.redact import MASK, credential_kind, redact_argv, secret_name

GHP = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
AKIA = "AKIA" + "ABCDEFGHIJKLMNOP"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["curl", "--token=abc123"], ["curl", f"--token={MASK}"]),
        (["curl", "--token", "abc123", "x"], ["curl", "--token", MASK, "x"]),
        (["tool", "--password", "hunter2"], ["tool", "--password", MASK]),
        (["tool", "--db-password=hunter2"], ["tool", f"--db-password={MASK}"]),
        (["tool", "--client-secret", "s"], ["tool", "--client-secret", MASK]),
        (["tool", "--api-key=k"], ["tool", f"--api-key={MASK}"]),
        (["env", "GITHUB_TOKEN=abc", "make"], ["env", f"GITHUB_TOKEN={MASK}", "make"]),
        (["echo", GHP], ["echo", MASK]),
        (["echo", f"x{AKIA}"], ["echo", f"x{AKIA}"]),  # glued to a word: not a key id
        (["aws", AKIA], ["aws", MASK]),
        (["git", "clone", "https://bob:s3cret@example.com/r.git"],
         ["git", "clone", f"https://bob:{MASK}@example.com/r.git"]),
        (["curl", "-H", f"Authorization: Bearer {GHP}"],
         ["curl", "-H", f"Authorization: Bearer {MASK}"]),
        (["curl", "-H", "Authorization: Bearer abcdefgh12345"],
         ["curl", "-H", f"Authorization: Bearer {MASK}"]),
        # Ordinary flags stay readable.
        (["git", "commit", "--author=A <a@b>", "-m", "fix"],
         ["git", "commit", "--author=A <a@b>", "-m", "fix"]),
        (["pytest", "--bypass", "x", "--passthrough"],
         ["pytest", "--bypass", "x", "--passthrough"]),
        (["npm", "install", "left-pad"], ["npm", "install", "left-pad"]),
    ],
)  # fmt: skip
def test_redact_argv(argv, expected):
    assert redact_argv(argv) == expected


def test_redaction_never_keeps_the_secret_anywhere():
    argv = ["x", f"--token={GHP}", "--password", "p@ss", f"https://u:{GHP}@h/", GHP, f"K={AKIA}"]
    text = " ".join(redact_argv(argv))
    assert GHP not in text and "p@ss" not in text and AKIA not in text


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (GHP, "github token"),
        ("github_pat_" + "A" * 30, "github fine-grained token"),
        ("glpat-" + "x" * 20, "gitlab token"),
        ("sk-" + "z" * 40, "openai/anthropic-style key"),
        ("xoxb-1234567890-abc", "slack token"),
        (AKIA, "aws access key id"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "private key block"),
        ("postgres://app:pw@db/x", "password in a URL"),
        ("/usr/bin:/bin", None),
        ("sk-short", None),
        ("en_US.UTF-8", None),
        ("https://example.com/path", None),
    ],
)
def test_credential_kind(value, kind):
    assert credential_kind(value) == kind


def test_secret_names():
    assert all(map(secret_name, ["--token", "DB_PASSWORD", "client_secret", "--api-key", "PASS"]))
    assert not any(map(secret_name, ["--author", "--bypass", "PATH", "--tokens-per-sec", "HOME"]))
