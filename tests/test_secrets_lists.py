"""The secrets lists: hidden stores, stripped variable names, credential value shapes.

Each new entry is attacked for real (the installed `krate`, real bubblewrap, as root
and as the ordinary user): the workload tries to read the store or print the
variable, and the test checks that it failed and that the denial was recorded by
name only (the value appears nowhere in the store's files).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from krate.policy import Flags, effective_policy
from krate.policy.builtin import SECRET_ENV, SECRET_STORES
from krate.redact import MASK, credential_kind, redact_argv, secret_name
from krate.sandbox import seatbelt
from krate.sandbox.spec import build

from .conftest import chown_tree
from .run_support import SECRET, Box

needs_bwrap = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

# Secret stores, as they exist on disk (glob entries by the names they match).
NEW_STORES = [
    ".git-credentials",
    ".config/git/credentials",
    ".local/share/keyrings/login.keyring",
    ".password-store/bank.gpg",
    ".pgpass",
    ".my.cnf",
    ".vault-token",
    ".config/gcloud/application_default_credentials.json",
    ".azure/msal_token_cache.json",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".terraform.d/credentials.tfrc.json",
    ".bash_history",
    ".zsh_history",
    ".local/share/fish/fish_history",
    ".python_history",
    ".node_repl_history",
    ".psql_history",
    ".mysql_history",
    ".sqlite_history",
    ".rediscli_history",
    ".config/BraveSoftware/Brave-Browser/Default/Cookies",
    "Library/Application Support/BraveSoftware/Brave-Browser/Default/Cookies",
    ".config/microsoft-edge/Default/Login Data",
    "Library/Application Support/Microsoft Edge/Default/Login Data",
    "snap/firefox/common/.mozilla/firefox/x.default/logins.json",
    ".var/app/org.mozilla.firefox/.mozilla/firefox/x.default/logins.json",
    "Library/Cookies/Cookies.binarycookies",
    ".cache/huggingface/token",
    ".config/hub",
    ".config/glab-cli/config.yml",
    ".yarnrc.yml",
    ".local/share/krate/krate.db",
]
# Next to them, files that must stay readable (a glob hides what it matches, not its folder).
VISIBLE = [".cargo/config.toml", ".terraform.d/plugins/readme", ".local/share/other.txt"]


def _covered(relative: str) -> bool:
    """Whether some SECRET_STORES entry hides `~/relative` (the policy's own matching)."""
    policy = effective_policy(
        workspace=Path("/nonexistent-ws"),
        home=Path("/h"),
        user_policy_path=Path("/nonexistent.toml"),
        trusted={},
        flags=Flags(),
    )
    return policy.decide_read(f"/h/{relative}").verdict == "deny"


def test_every_new_store_is_in_the_list_and_the_neighbours_are_not():
    assert [s for s in NEW_STORES if not _covered(s)] == []
    assert [s for s in VISIBLE if _covered(s)] == []
    assert len(SECRET_STORES) == len(set(SECRET_STORES))


@needs_bwrap
def test_new_stores_are_hidden_and_recorded(box: Box):
    for relative in NEW_STORES + VISIBLE:
        path = box.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{SECRET}:{relative}\n")
    if box.user:
        chown_tree(box.home, box.user)
    paths = " ".join(f"'{box.home / r}'" for r in NEW_STORES + VISIBLE)
    out = box.sh(f'for f in {paths}; do cat "$f" 2>/dev/null; done; echo end')
    assert out.stdout.endswith("end\n"), out.stderr
    leaked = [r for r in NEW_STORES if f"{SECRET}:{r}\n" in out.stdout]
    assert leaked == []
    for relative in VISIBLE:  # still readable: the rules hide the secrets, not their folders
        assert f"{SECRET}:{relative}\n" in out.stdout
    hidden = box.last_run()["layout"]["hidden"]
    for relative in (".cargo/credentials", ".cargo/credentials.toml", ".pgpass", ".bash_history"):
        assert str(box.home / relative) in hidden


def test_a_glob_entry_hides_what_exists_on_linux_and_the_pattern_on_macos(tmp_path):
    home = tmp_path / "home"
    for name in ("credentials", "credentials.toml", "config.toml"):
        (home / ".cargo").mkdir(parents=True, exist_ok=True)
        (home / ".cargo" / name).write_text("x")
    policy = effective_policy(
        workspace=tmp_path, home=home, user_policy_path=tmp_path / "none", trusted={}, flags=Flags()
    )
    rule = policy.decide_read(home / ".cargo" / "credentials.json")
    assert (rule.verdict, rule.rule) == ("deny", "filesystem.deny_read: ~/.cargo/credentials*")
    assert policy.decide_read(home / ".cargo" / "config.toml").verdict == "allow"
    assert policy.decide_read(home / ".cargo" / "credentialsX" / "deep").verdict == "deny"
    spec = build(
        argv=("true",),
        cwd=tmp_path,
        workspace=tmp_path,
        allow_write=(),
        read_only=(),
        deny_read=policy.deny_read,
        env={},
    )
    cargo = home / ".cargo"
    assert {p for p in spec.hidden if p.parent == cargo} == {
        cargo / "credentials",
        cargo / "credentials.toml",
    }
    assert cargo / "credentials*" in spec.declared_hidden
    text = seatbelt.profile(spec)
    [line] = [ln for ln in text.splitlines() if "credentials" in ln and ".cargo" in ln]
    assert line.startswith('(deny file-read* file-write* (regex #"^')
    pattern = line[line.index('#"') + 2 : line.rindex('"')]
    for name, hidden in (
        ("credentials", True),
        ("credentials.toml", True),
        ("credentials.toml/x", True),
        ("config.toml", False),
        ("xcredentials", False),
    ):
        assert bool(re.search(pattern, f"{cargo}/{name}")) is hidden, name
    assert not re.search(pattern, f"{str(cargo).replace('.', 'x')}/credentials")  # `.` escaped
    assert seatbelt.visible_inside(cargo / "credentials.new", spec) is False
    assert seatbelt.visible_inside(cargo / "config.toml", spec) is True


# ---------------------------------------------------------------- environment

# One value per name: unique, so a leak names the variable.
NEW_NAMES = [
    "PRIVATE_KEY",
    "ACCESS_KEY",
    "DB_PASS",
    "DB_PWD",
    "MYSQL_PWD",
    "GPG_PASSPHRASE",
    "SIGNING_KEY_PASSPHRASE",
    "CREDENTIALS",
    "APIKEY",
    "MY_APIKEY",
    "NPM_CONFIG__AUTH",
    "npm_config__auth",
    "npm_config_//registry.npmjs.org/:_authToken",
    "npm_config_//npm.example.com/:_password",
    "GH_PAT",
    "VAULT_TOKEN",
    "SLACK_WEBHOOK_URL",
    "HTTP_AUTHORIZATION",
    "SESSION_COOKIE",
    "DOCKER_AUTH_CONFIG",
    "TEST_DATABASE_URL",
    "RAILS_MASTER_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
]
# Values that are credentials under innocent names: stripped by their shape.
SHAPES = {
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrcmF0ZSJ9.dGhpc2lzYXNpZ25hdHVyZQ",
    "google oauth access token": "ya29.a0AfB_byC1x2y3z4w5v6u7t8s9r0q",
    "docker personal access token": "dckr_pat_" + "AbC1dEf2GhI3jKl4MnO5pQr6",
    "slack webhook url": "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "discord webhook url": "https://discord.com/api/webhooks/123456789012/" + "Ab-" * 10,
    "vault token": "hvs." + "CAESIJ" * 5,
    "sendgrid key": "SG." + "a" * 22 + "." + "b" * 43,
    "age secret key": "AGE-SECRET-KEY-1" + "Q" * 58,
    "google oauth refresh token": "1//0" + "gX" * 20,
    "slack token": "xoxe-1-" + "Ab3" * 5,
    "slack app token": "xapp-1-" + "A1b2C3d4E5f6",
    "gitlab token": "glptt-" + "x1" * 12,
    "digitalocean token": "dop_v1_" + "a1" * 32,
    "shopify token": "shpat_" + "0a" * 16,
    "atlassian api token": "ATATT3xFfGF0" + "a" * 20,
    "databricks token": "dapi" + "0123456789abcdef" * 2,
    "grafana token": "glsa_" + "A" * 32,
    "terraform cloud token": "AbCdEfGhIjKlMn.atlasv1." + "z" * 64,
    "pulumi token": "pul-" + "0123456789" * 4,
    "doppler token": "dp.pt." + "a" * 43,
    "linear api key": "lin_api_" + "a" * 40,
    "postman api key": "PMAK-" + "0" * 24 + "-" + "a" * 34,
    "azure storage key": "AccountKey=" + "A" * 86 + "==",
}
# Path-like variables that TLS and tools need: kept, values untouched.
KEPT = {
    "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
    "CURL_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
    "AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
    "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
    "SSL_CERT_DIR": "/etc/ssl/certs",
    "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt",
    "GIT_SSL_CAINFO": "/etc/ssl/certs/ca-certificates.crt",
    "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
    "NPM_CONFIG_CAFILE": "/etc/ssl/certs/ca-certificates.crt",
    "CARGO_HTTP_CAINFO": "/etc/ssl/certs/ca-certificates.crt",
    "NPM_CONFIG_USERCONFIG": "/etc/npmrc",
    "DOCKER_CONFIG": "/etc/docker",
    "KUBECONFIG": "/etc/kubernetes/admin.conf",
    "GIT_ASKPASS": "/usr/lib/git-core/git-gui--askpass",
    "TOKENIZERS_PARALLELISM": "false",
    "COOKIECUTTER_CONFIG": "/etc/cookiecutter.yaml",
    "PWD": "/somewhere",
    "OLDPWD": "/elsewhere",
}


def _db_bytes(box: Box) -> bytes:
    return b"".join(p.read_bytes() for p in box.krate_home.rglob("*") if p.is_file())


@needs_bwrap
def test_new_names_and_shapes_are_stripped_and_recorded_by_name_only(box: Box):
    values = {name: f"val-{i}-q7zx9" for i, name in enumerate(NEW_NAMES)}
    shaped = {f"INNOCENT_{i}": v for i, v in enumerate(SHAPES.values())}
    env = box.env(**values, **shaped)
    out = box.sh("env; cat /proc/self/environ | tr '\\0' '\\n'; echo end", env=env)
    assert out.returncode == 0 and out.stdout.endswith("end\n"), out.stderr
    for value in [*values.values(), *shaped.values()]:
        assert value not in out.stdout
    decisions = {d["subject"]: d for d in box.last_run()["decisions"] if d.get("area") == "env"}
    for name in [*values, *shaped]:
        assert decisions[name]["verdict"] == "deny", name
    for i, kind in enumerate(SHAPES):
        assert decisions[f"INNOCENT_{i}"]["rule"] == f"value looks like a {kind}"
    stored = _db_bytes(box)
    for value in [*values.values(), *shaped.values()]:
        assert value.encode() not in stored


@needs_bwrap
def test_tls_and_tool_path_variables_are_kept_and_tls_loads_the_bundle(box: Box):
    env = box.env(**KEPT)
    script = (
        "env; python3 -c 'import os, ssl; ssl.create_default_context("
        'cafile=os.environ["REQUESTS_CA_BUNDLE"]); ssl.create_default_context('
        'capath=os.environ["SSL_CERT_DIR"]); print("TLS-OK")\''
    )
    out = box.sh(script, env=env)
    assert "TLS-OK" in out.stdout, out.stderr
    lines = set(out.stdout.splitlines())
    for name, value in KEPT.items():
        if name not in ("PWD", "OLDPWD"):  # the shell sets those itself
            assert f"{name}={value}" in lines, name
    denied = [d["subject"] for d in box.last_run()["decisions"] if d.get("area") == "env"]
    assert not set(denied) & set(KEPT)


# ---------------------------------------------------------------- one list for env and argv


def _example(pattern: str) -> str:
    return pattern.replace("*", "X")


@pytest.mark.parametrize("pattern", SECRET_ENV)
def test_every_strip_pattern_also_redacts_the_argv(pattern):
    name = _example(pattern)
    policy = effective_policy(
        workspace=Path("/nonexistent-ws"),
        home=Path("/h"),
        user_policy_path=Path("/nonexistent.toml"),
        trusted={},
        flags=Flags(),
    )
    assert policy.decide_env(name).verdict == "deny"
    assert secret_name(name)
    assert redact_argv(["env", f"{name}=hunter2", "make"]) == ["env", f"{name}={MASK}", "make"]


@pytest.mark.parametrize("name", NEW_NAMES)
def test_every_new_name_is_one_list_for_env_and_argv(name):
    assert secret_name(name)
    flag = "--" + name.lower().replace("_", "-")
    if name.replace("_", "").isalnum():
        assert redact_argv(["tool", f"{flag}=v", flag, "w"]) == [
            "tool",
            f"{flag}={MASK}",
            flag,
            MASK,
        ]


def test_flags_are_matched_as_a_suffix_and_ordinary_ones_stay_readable():
    for flag in ("--pass", "--pwd", "--auth", "--token", "--pat", "--cookie", "--webhook"):
        assert secret_name(flag), flag
    for flag in ("--aws-region", "--author", "--passthrough", "--tokens-per-sec", "--keep"):
        assert not secret_name(flag), flag
    for name in KEPT:
        assert not secret_name(name), name


def test_every_shape_in_the_list_is_tested():
    from krate.redact import TOKEN_SHAPES

    old = {"github token", "github fine-grained token", "openai/anthropic-style key",
           "stripe key", "aws access key id", "google api key", "npm token", "pypi token",
           "hugging face token"}  # fmt: skip
    assert {label for label, _, _ in TOKEN_SHAPES} - old == set(SHAPES)


@pytest.mark.parametrize(("kind", "value"), list(SHAPES.items()))
def test_new_value_shapes_are_known_and_cut_out_of_argv(kind, value):
    assert credential_kind(value) == kind
    assert credential_kind(f"prefix {value} suffix") == kind
    redacted = " ".join(redact_argv(["curl", "-d", f"x={value}", value]))
    assert value not in redacted


# ---------------------------------------------------------------- the lookups behind a long list


def test_the_resolver_gives_realpaths_answer_for_links_missing_paths_and_loops(tmp_path):
    from krate.policy.paths import Resolver

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "sub" / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "rel").symlink_to("real/sub")
    (tmp_path / "real" / "up").symlink_to("..")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    names = [
        "real", "real/sub/f", "link", "link/sub/f", "link/missing/deeper", "rel/f", "rel/..",
        "real/up/link/sub", "loop", "loop/x", "dangling", "dangling/y", "missing/a/b",
        "real/sub/f/x", "./real", "real/../link", "real//sub",
    ]  # fmt: skip
    resolver = Resolver()
    for name in names * 2:  # the second time from the memo
        path = f"{tmp_path}/{name}"
        assert resolver(path) == os.path.realpath(path), name
    for name in ("real/sub/f", "link/sub/f", "missing/a/b", "real/sub/f/x"):
        real = resolver(f"{tmp_path}/{name}")
        assert resolver.exists(real) == os.path.exists(real), name


def test_docs_policy_md_lists_every_builtin_entry():
    from krate.policy.builtin import KEEP_ENV

    text = (Path(__file__).parent.parent / "docs" / "policy.md").read_text()
    missing = [e for e in (*SECRET_STORES, *SECRET_ENV, *KEEP_ENV) if f"`{e}`" not in text]
    assert missing == []
