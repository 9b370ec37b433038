"""npm's and pip's settings filtered by allowlist, and the Seatbelt profile around the caches.

The sanitizers are pure: every credential form npm and pip know is dropped or cut out of
its URL, and what a corporate network needs passes. The Seatbelt half is asked of the
SBPL evaluator (tests/sbpl.py), since Seatbelt cannot mount: the caches are writable in
krate's hidden data folder, and nothing else there is.
"""

from __future__ import annotations

import os
from pathlib import Path

from krate.policy import Flags
from krate.sandbox import pkgcache, pkgconfig, seatbelt

from .sbpl import decide, parse
from .seatbelt_support import CACHE, DATA, HOME, WS, spec_for

TOKEN = "npm_0123456789abcdefTOKEN"


def test_npmrc_keeps_registry_proxy_and_tls_settings_and_drops_every_credential():
    text = (
        "; comment\n"
        "registry = https://npm.corp.example/\n"
        "@corp:registry=https://user:pw@npm.corp.example/scoped/\n"
        f"//npm.corp.example/:_authToken={TOKEN}\n"
        f"//npm.corp.example/:_password={TOKEN}\n"
        "//npm.corp.example/:username=bob\n"
        f"_auth={TOKEN}\n"
        f"_authToken={TOKEN}\n"
        "email=bob@corp.example\n"
        "always-auth=true\n"
        "certfile=/home/bob/client.pem\nkeyfile=/home/bob/client.key\n"
        f"https-proxy=http://bob:{TOKEN}@proxy.corp.example:3128\n"
        "noproxy=localhost,.corp.example\nstrict-ssl=false\ncafile=/etc/corp-ca.pem\n"
        "init-module=~/.npm-init.js\n"
    )
    clean = pkgconfig.sanitize_npmrc(text)
    assert TOKEN not in clean and "bob" not in clean and "client" not in clean
    assert clean.splitlines() == [
        "registry=https://npm.corp.example/",
        "@corp:registry=https://npm.corp.example/scoped/",
        "https-proxy=http://proxy.corp.example:3128",
        "noproxy=localhost,.corp.example",
        "strict-ssl=false",
        "cafile=/etc/corp-ca.pem",
    ]


def test_pip_conf_keeps_index_and_network_settings_and_drops_credentials():
    text = (
        "[global]\n"
        f"index-url = https://alice:{TOKEN}@pypi.corp.example/simple\n"
        f"extra_index_url = https://__token__:{TOKEN}@a.example/simple https://b.example/s\n"
        f"proxy = alice:{TOKEN}@proxy.corp.example:3128\n"
        "client-cert = /home/alice/key.pem\ncert = /etc/corp-ca.pem\ntrusted-host = a.example\n"
        f"[install]\nfind-links = https://u:{TOKEN}@files.example/wheels\nuser = true\n"
    )
    clean = pkgconfig.sanitize_pipconf(text)
    assert TOKEN not in clean and "alice" not in clean and "key.pem" not in clean
    assert "index-url = https://pypi.corp.example/simple" in clean
    assert "extra_index_url = https://a.example/simple https://b.example/s" in clean
    assert "proxy = proxy.corp.example:3128" in clean
    assert "cert = /etc/corp-ca.pem" in clean and "trusted-host = a.example" in clean
    assert "find-links = https://files.example/wheels" in clean and "user" not in clean
    assert pkgconfig.sanitize_pipconf("not [ini") == ""


def test_urls_without_credentials_are_unchanged():
    for value in ("https://host/@scope/pkg", "http://127.0.0.1:8080/", "/opt/wheels", "30"):
        assert pkgconfig.strip_userinfo(value) == value


def _seatbelt(tmp_path: Path):
    spec, _ = spec_for(tmp_path, Flags(policy="default"), workspace=WS)
    folder = pkgcache.project_folder(DATA, WS)
    spec = pkgcache.apply(spec, folder=folder, home=HOME, environ={}, mounts=False)
    conf = HOME / ".config" / "pip" / "pip.conf"
    run = tmp_path / "run.pkg"
    run.mkdir()
    copies = [
        pkgconfig.Copy(conf, "[global]\nindex-url = https://pypi.corp.example/simple\n", "pip"),
        pkgconfig.Copy(HOME / ".npmrc", "registry=https://npm.corp.example/\n", "npm"),
    ]
    spec = pkgconfig.named(spec, copies, run)
    return spec, folder, run, parse(seatbelt.profile(spec, user_cache=CACHE))


def test_seatbelt_writes_krates_caches_only_and_never_the_store(tmp_path):
    spec, folder, run, prof = _seatbelt(tmp_path)
    assert spec.env["npm_config_cache"] == str(folder / "npm")
    assert spec.env["PIP_CACHE_DIR"] == str(folder / "pip")
    assert spec.env["GOMODCACHE"] == str(folder / "go-mod")
    for tool in ("npm", "pip", "go-build", "yarn"):
        assert decide(prof, "file-write*", f"{folder}/{tool}/x/y") == "allow", tool
        assert decide(prof, "file-read*", f"{folder}/{tool}/x/y") == "allow", tool
    for path in (f"{DATA}/krate.db", f"{DATA}/krate.db-wal", f"{folder}/workspace",
                 f"{folder}/used", f"{DATA}/caches/0123456789abcdef/npm/x"):  # fmt: skip
        assert decide(prof, "file-read*", path) == "deny", path
        assert decide(prof, "file-write*", path) == "deny", path
    # the user's own caches stay read-only: nothing a run writes reaches them
    for path in (f"{HOME}/.npm/_cacache/x", f"{HOME}/Library/Caches/pip/x", f"{HOME}/go/pkg/x"):
        assert decide(prof, "file-write*", path) == "deny", path


def test_seatbelt_shows_the_sanitized_settings_and_hides_the_users_pip_conf(tmp_path):
    spec, _folder, run, prof = _seatbelt(tmp_path)
    assert spec.env["NPM_CONFIG_USERCONFIG"] == str(run / "npmrc")
    assert "npm.corp.example" in (run / "npmrc").read_text()
    assert (run / "npmrc").stat().st_mode & 0o777 == 0o600
    merged = Path(spec.env["PIP_CONFIG_FILE"])
    assert merged.parent == run and "pypi.corp.example" in merged.read_text()
    assert decide(prof, "file-read*", str(merged)) == "allow"
    assert decide(prof, "file-read*", f"{HOME}/.config/pip/pip.conf") == "deny"
    assert decide(prof, "file-read*", f"{HOME}/.npmrc") == "deny"  # the built-in hide


def test_bubblewrap_shows_the_copies_from_descriptors_over_the_originals():
    import shutil
    import tempfile

    from krate.sandbox import bwrap
    from krate.sandbox.spec import build

    tmp_path = Path(tempfile.mkdtemp(dir="/var/tmp"))  # the sandbox's /tmp is its own
    npmrc = tmp_path / ".npmrc"
    npmrc.write_text(f"_authToken={TOKEN}\n")
    spec = build(
        argv=("true",), cwd=tmp_path, workspace=tmp_path, allow_write=(), read_only=(),
        deny_read=(npmrc,), env={},
    )  # fmt: skip
    assert npmrc in spec.hidden
    spec = pkgconfig.mounted(spec, [pkgconfig.Copy(npmrc, "registry=https://r.example/\n", "npm")])
    assert npmrc not in spec.hidden  # the copy takes its place
    fds: list[int] = []
    argv = bwrap.command(spec, "/usr/bin/bwrap", fds=fds, seccomp=lambda: None)
    at = argv.index(str(npmrc))
    assert argv[at - 2] == "--ro-bind-data"
    fd = int(argv[at - 1])
    assert os.read(fd, 100) == b"registry=https://r.example/\n"
    for fd in fds:
        os.close(fd)
    shutil.rmtree(tmp_path)


def test_a_cache_variable_pointing_into_a_writable_folder_is_the_users_choice(tmp_path):
    spec, _ = spec_for(tmp_path, Flags(policy="default"), workspace=WS)
    folder = pkgcache.project_folder(DATA, WS)
    mine = {"PIP_CACHE_DIR": f"{WS}/.pip-cache"}
    spec = pkgcache.apply(spec._replace(env=dict(mine)), folder=folder, home=HOME,
                          environ=mine, mounts=False)  # fmt: skip
    assert spec.env["PIP_CACHE_DIR"] == f"{WS}/.pip-cache"
    assert spec.env["npm_config_cache"] == str(folder / "npm")


def test_configparser_loads_only_for_a_pip_conf_to_copy():
    """~1 ms of every run's start: a machine without a pip.conf never loads it."""
    import subprocess
    import sys

    code = (
        "import sys; from krate.sandbox import pkgconfig; "
        "before = 'configparser' in sys.modules; "
        "clean = pkgconfig.sanitize_pipconf('[global]\\nindex-url = https://u:p@x.example/s\\n'); "
        "print(before, 'configparser' in sys.modules, 'u:p' in clean)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "False"], done.stderr
