"""Layering and trust: an untrusted project file only narrows; trust is per exact bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krate.errors import UsageError
from krate.policy import Flags, PolicyError, effective_policy
from krate.policy.builtin import PACKAGE_REGISTRIES, SECRET_STORES, builtin_layer
from krate.policy.layers import compile_layers, find_project_file
from krate.policy.load import parse_text
from tests._policy_util import effective

USER_POLICY = """
[network]
add = ["api.example.com", "*.corp.example:8443"]
[filesystem]
allow_write = ["~/cache"]
[env]
pass = ["NPM_TOKEN"]
"""

NET_SUBJECTS = [
    (h, p)
    for h in (
        "registry.npmjs.org",
        "pypi.org",
        "api.github.com",
        "github.com",
        "evil.com",
        "api.example.com",
        "x.corp.example",
        "localhost",
        "127.0.0.1",
        "raw.githubusercontent.com",
    )
    for p in (22, 443, 5432, 8443)
]
PATH_SUBJECTS = [
    "src/a.c",
    "build/out",
    "secrets/k",
    "~/cache/x",
    "~/.ssh/id",
    "~/docs/d",
    "/etc/hosts",
    "/tmp/x/y",
    ".git/hooks/pre-commit",
    "link-to-etc/passwd",
    "package.json",
    "~/.bashrc",
]
ENV_SUBJECTS = [
    "PATH",
    "HOME",
    "GITHUB_TOKEN",
    "NPM_TOKEN",
    "NPM_CONFIG",
    "MY_VAR",
    "AWS_SECRET_ACCESS_KEY",
]


def toml_list(values):
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def render_project(spec: dict) -> str:
    lines = []
    if spec.get("profile"):
        lines.append(f'profile = "{spec["profile"]}"')
    for section, keys in (
        ("filesystem", ("deny_read", "allow_write", "read_only")),
        ("network", ("allow", "add")),
        ("env", ("strip", "pass")),
    ):
        present = [k for k in keys if spec.get(f"{section}.{k}") is not None]
        if present:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_list(spec[f'{section}.{k}'])}" for k in present]
    limits = {k: v for k, v in spec.get("limits", {}).items() if v is not None}
    if limits:
        lines.append("[limits]")
        lines += [f"{k} = {v}" for k, v in limits.items()]
    return "\n".join(lines) + "\n"


def optional_sublist(pool):
    return st.one_of(st.none(), st.lists(st.sampled_from(pool), max_size=4, unique=True))


ANY_PROJECT = st.fixed_dictionaries(
    {
        "profile": st.sampled_from([None, "strict", "default", "open"]),
        "network.allow": optional_sublist(
            [
                "registry.npmjs.org",
                "pypi.org",
                "*.github.com",
                "evil.com",
                "*",
                "*:*",
                "api.example.com:8443",
                "localhost:5432",
                "*.githubusercontent.com",
                "github.com:22",
            ]
        ),
        "network.add": optional_sublist(["evil.com", "pypi.org", "*", "x.corp.example:8443"]),
        "filesystem.deny_read": optional_sublist(["secrets", "~/docs", "/etc"]),
        "filesystem.allow_write": optional_sublist(
            [".", "build", "~/.cache", "/tmp/x", "~", ".git/hooks", "link-to-etc", "~/cache/x"]
        ),
        "filesystem.read_only": optional_sublist(["src", "package.json"]),
        "env.strip": optional_sublist(["NPM_*", "HOME", "PATH"]),
        "env.pass": optional_sublist(["GITHUB_TOKEN", "PATH", "NPM_*", "MY_VAR", "AWS_*"]),
        "limits": st.fixed_dictionaries(
            {
                k: st.one_of(st.none(), st.integers(1, 10_000))
                for k in ("cpu_seconds", "memory_mb", "processes", "wall_seconds")
            }
        ),
    }
)

NARROWING_PROJECT = st.fixed_dictionaries(
    {
        "profile": st.sampled_from([None, "strict"]),
        "network.allow": optional_sublist(
            [
                "registry.npmjs.org",
                "pypi.org",
                "api.example.com",
                "api.example.com:443",
                "x.corp.example:8443",
            ]
        ),
        "filesystem.deny_read": optional_sublist(["secrets", "~/docs", "/etc", "src"]),
        "filesystem.allow_write": optional_sublist([".", "build", "~/cache/x"]),
        "filesystem.read_only": optional_sublist(["src", "package.json"]),
        "env.strip": optional_sublist(["NPM_*", "HOME", "PATH", "MY_*"]),
        "env.pass": optional_sublist(["PATH", "MY_VAR"]),
        "limits": st.fixed_dictionaries(
            {
                k: st.one_of(st.none(), st.integers(1, 10_000))
                for k in ("cpu_seconds", "memory_mb", "processes", "wall_seconds")
            }
        ),
    }
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    home, ws = root / "home", root / "ws"
    home.mkdir()
    ws.mkdir()
    os.symlink("/etc", ws / "link-to-etc")
    user_text = USER_POLICY
    user, problems = parse_text(user_text, source=home / "policy.toml", name="user", trusted=True)
    assert not problems
    return {"home": home, "ws": ws, "user": user._replace(base_dir=ws)}


def compile_with(world, project_text: str | None, *, trusted: bool):
    ws, home = world["ws"], world["home"]
    stack = [builtin_layer("default", ws), world["user"]]
    if project_text is not None:
        layer, problems = parse_text(
            project_text, source=ws / "krate.toml", name="project", trusted=trusted
        )
        assert not problems, problems
        stack.append(layer)
    return compile_layers(stack, workspace=ws, home=str(home))


def verdicts(policy):
    out = {}
    for host, port in NET_SUBJECTS:
        out[("net", host, port)] = policy.decide_net(host, port).verdict
    for path in PATH_SUBJECTS:
        out[("read", path)] = policy.decide_read(path).verdict
        out[("write", path)] = policy.decide_write(path).verdict
    for name in ENV_SUBJECTS:
        out[("env", name)] = policy.decide_env(name).verdict
    return out


def limits_at_most(narrow, wide):
    for name, value in narrow.limits.to_dict().items():
        other = getattr(wide.limits, name)
        if other is not None and (value is None or value > other):
            return False
    return True


PROPERTY = settings(
    deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(ANY_PROJECT)
def test_an_untrusted_project_file_never_widens(world, spec):
    text = render_project(spec)
    base = verdicts(compile_with(world, None, trusted=False))
    untrusted_policy = compile_with(world, text, trusted=False)
    untrusted = verdicts(untrusted_policy)
    widened = [k for k, v in untrusted.items() if v == "allow" and base[k] == "deny"]
    assert not widened, (text, widened, untrusted_policy.ignored)
    assert limits_at_most(untrusted_policy, compile_with(world, None, trusted=False))


@PROPERTY
@given(NARROWING_PROJECT)
def test_a_narrowing_project_file_always_narrows_trusted_or_not(world, spec):
    text = render_project(spec)
    base_policy = compile_with(world, None, trusted=False)
    base = verdicts(base_policy)
    untrusted_policy = compile_with(world, text, trusted=False)
    trusted_policy = compile_with(world, text, trusted=True)
    assert untrusted_policy.ignored == (), text
    assert verdicts(untrusted_policy) == verdicts(trusted_policy)
    narrowed = verdicts(untrusted_policy)
    assert not [k for k, v in narrowed.items() if v == "allow" and base[k] == "deny"]
    # Each narrowing rule is in force.
    for path in spec["filesystem.deny_read"] or ():
        assert untrusted_policy.decide_read(path).verdict == "deny"
    for path in spec["filesystem.read_only"] or ():
        assert untrusted_policy.decide_write(path).verdict == "deny"
    if spec["network.allow"] is not None:
        for host, port in NET_SUBJECTS:
            if narrowed[("net", host, port)] == "allow":
                assert untrusted_policy.decide_net(host, port).layer in (
                    "project",
                    "user",
                    "builtin:default",
                )
    if spec["profile"] == "strict" and spec["network.allow"] is None:
        assert untrusted_policy.network_allow == ()
    for name in ENV_SUBJECTS:
        stripped = any(name.startswith(p.rstrip("*")) for p in spec["env.strip"] or ())
        if stripped and name not in (spec["env.pass"] or ()):
            assert untrusted_policy.decide_env(name).verdict == "deny", name
    for name, value in spec["limits"].items():
        assert getattr(untrusted_policy.limits, name) == value


@PROPERTY
@given(ANY_PROJECT)
def test_trusting_applies_the_file_as_written(world, spec):
    text = render_project(spec)
    trusted_policy = compile_with(world, text, trusted=True)
    assert trusted_policy.ignored == ()
    for item in spec["network.add"] or ():
        host, _, port = item.partition(":")
        if host != "*":
            port_n = 443 if port in ("", "*") else int(port)
            assert trusted_policy.decide_net(host, port_n).verdict == "allow", (text, item)


# -- real files through effective_policy ----------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


WIDENING = """\
[network]
allow = ["evil.example", "registry.npmjs.org"]

[filesystem]
allow_write = ["~/.config"]
"""


def test_widening_is_ignored_and_reported_until_trusted_and_an_edit_revokes_trust(tmp_path):
    home, ws = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    ws.mkdir()
    project = write(ws / "krate.toml", WIDENING)

    untrusted = effective(ws, home)
    assert untrusted.decide_net("evil.example", 443).verdict == "deny"
    assert untrusted.decide_net("registry.npmjs.org", 443).verdict == "allow"
    assert untrusted.decide_net("pypi.org", 443).verdict == "deny"  # narrowed away
    assert untrusted.decide_write(home / ".config" / "x").verdict == "deny"
    assert any(
        n.startswith(f"{project}:2: network.allow `evil.example` ignored")
        for n in untrusted.ignored
    )
    assert any(
        n.startswith(f"{project}:5: filesystem.allow_write `~/.config` ignored")
        for n in untrusted.ignored
    )
    assert untrusted.layers[-2]["trusted"] is False

    trusted_map = {str(project): sha(project)}
    trusted = effective(ws, home, trusted=trusted_map)
    assert trusted.ignored == ()
    decision = trusted.decide_net("evil.example", 443)
    assert (decision.verdict, decision.rule, decision.layer) == (
        "allow",
        "network.allow: evil.example",
        "project",
    )
    assert trusted.decide_write(home / ".config" / "x").verdict == "allow"
    assert trusted.hash != untrusted.hash

    project.write_text(WIDENING + "# a harmless-looking edit\n")
    edited = effective(ws, home, trusted=trusted_map)
    assert edited.decide_net("evil.example", 443).verdict == "deny"
    assert edited.ignored and edited.hash == untrusted.hash


def test_untrusted_allow_star_keeps_the_lower_list_and_empty_means_no_network(tmp_path):
    write(tmp_path / "krate.toml", '[network]\nallow = ["*:*"]\n')
    star = effective(tmp_path, tmp_path)
    assert set(star.network_allow) == set(PACKAGE_REGISTRIES)
    assert star.decide_net("evil.example", 443).verdict == "deny"

    write(tmp_path / "krate.toml", "[network]\nallow = []\n")
    none = effective(tmp_path, tmp_path)
    assert none.network_allow == ()
    assert none.ignored == ()
    decision = none.decide_net("registry.npmjs.org", 443)
    assert (decision.verdict, decision.rule, decision.layer) == (
        "deny",
        "network.allow: [] (no network)",
        "project",
    )


def test_untrusted_wildcard_is_cut_down_to_the_hosts_below(tmp_path):
    write(tmp_path / "krate.toml", '[network]\nallow = ["*.github.com"]\n')
    policy = effective(tmp_path, tmp_path)
    assert policy.network_allow == ("api.github.com", "codeload.github.com")
    assert policy.decide_net("gist.github.com", 443).verdict == "deny"
    assert any("beyond what the layers below allow" in note for note in policy.ignored)


def test_user_policy_widens_and_is_trusted(tmp_path):
    user = write(tmp_path / "policy.toml", USER_POLICY)
    (tmp_path / "ws").mkdir()
    policy = effective(tmp_path / "ws", tmp_path, user_policy=user)
    decision = policy.decide_net("api.example.com", 443)
    assert (decision.verdict, decision.layer) == ("allow", "user")
    assert policy.decide_net("x.corp.example", 8443).verdict == "allow"
    assert (
        policy.decide_net("registry.npmjs.org", 443).verdict == "allow"
    )  # add keeps the builtin list
    assert policy.decide_write(tmp_path / "cache" / "f").verdict == "allow"
    assert policy.decide_env("NPM_TOKEN").verdict == "allow"
    assert policy.name == "default+user"


def test_invalid_user_policy_is_an_error_naming_file_and_line(tmp_path):
    user = write(tmp_path / "policy.toml", '[network]\nallow = ["ok.example",\n  "http://bad"]\n')
    with pytest.raises(PolicyError) as info:
        effective(tmp_path, tmp_path, user_policy=user)
    assert str(info.value).startswith(f"{user}:3: `network.allow`: invalid host pattern")


def test_flags_are_the_top_layer(tmp_path):
    user = write(tmp_path / "policy.toml", USER_POLICY)
    ws = tmp_path / "ws"
    ws.mkdir()
    strict = effective(ws, tmp_path, user_policy=user, flags=Flags(policy="strict"))
    assert strict.network_allow == ()
    assert strict.name == "strict+user"
    decision = strict.decide_net("api.example.com", 443)
    assert (decision.verdict, decision.rule, decision.layer) == (
        "deny",
        "--policy strict (no network)",
        "flags",
    )

    opened = effective(ws, tmp_path, flags=Flags(policy="open"))
    assert opened.decide_net("anything.example", 22).verdict == "allow"
    assert opened.decide_read(tmp_path / ".ssh" / "id_rsa").verdict == "deny"  # still hidden

    added = effective(
        ws, tmp_path, flags=Flags(policy="strict", allow_host=("api.example.com:8443",))
    )
    assert added.network_allow == ("api.example.com:8443",)
    assert added.decide_net("api.example.com", 8443).rule == "--allow-host api.example.com:8443"

    off = effective(ws, tmp_path, flags=Flags(no_network=True))
    assert off.network_allow == ()
    assert off.decide_net("registry.npmjs.org", 443).rule == "--no-network"

    env = effective(ws, tmp_path, flags=Flags(env=("GITHUB_TOKEN",)))
    assert env.decide_env("GITHUB_TOKEN").to_dict() == {
        "verdict": "allow",
        "rule": "--env GITHUB_TOKEN",
        "layer": "flags",
        "subject": "GITHUB_TOKEN",
    }


@pytest.mark.parametrize(
    "flags, message",
    [
        (Flags(no_network=True, allow_host=("a.example",)), "--no-network and --allow-host"),
        (Flags(allow_host=("http://x",)), "--allow-host 'http://x'"),
        (Flags(deny_read=("~/*",)), "--deny-read '~/*'"),
        (Flags(env=("A=B",)), "--env 'A=B'"),
        (Flags(policy="nonesuch"), "neither a built-in profile"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path, flags, message):
    with pytest.raises(UsageError) as info:
        effective(tmp_path, tmp_path, flags=flags)
    assert message in str(info.value)


def test_policy_file_flag_is_a_trusted_layer(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    write(ws / "krate.toml", "[network]\nallow = []\n")  # untrusted project: no network
    chosen = write(tmp_path / "mine.toml", '[network]\nadd = ["evil.example"]\n')
    policy = effective(ws, tmp_path, flags=Flags(policy=str(chosen)))
    decision = policy.decide_net("evil.example", 443)
    assert (decision.verdict, decision.layer) == ("allow", "policy-file")
    assert policy.ignored == ()


def test_env_layers_the_highest_naming_layer_wins(tmp_path):
    user = write(tmp_path / "policy.toml", '[env]\npass = ["NPM_TOKEN"]\n')
    ws = tmp_path / "ws"
    ws.mkdir()
    write(ws / "krate.toml", '[env]\nstrip = ["NPM_*"]\npass = ["GITHUB_TOKEN"]\n')
    policy = effective(ws, tmp_path, user_policy=user)
    assert policy.decide_env("NPM_TOKEN").to_dict() == {
        "verdict": "deny",
        "rule": "env.strip: NPM_*",
        "layer": "project",
        "subject": "NPM_TOKEN",
    }
    assert policy.decide_env("GITHUB_TOKEN").verdict == "deny"  # untrusted pass ignored
    assert policy.decide_env("github_token").verdict == "deny"  # case does not matter
    assert policy.decide_env("PATH").verdict == "allow"
    flagged = effective(ws, tmp_path, user_policy=user, flags=Flags(env=("NPM_TOKEN",)))
    assert flagged.decide_env("NPM_TOKEN").layer == "flags"


def test_untrusted_limits_may_only_go_down(tmp_path):
    user = write(tmp_path / "policy.toml", "[limits]\nmemory_mb = 2048\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    write(ws / "krate.toml", "[limits]\nmemory_mb = 9999\ncpu_seconds = 60\n")
    policy = effective(ws, tmp_path, user_policy=user)
    assert policy.limits.memory_mb == 2048 and policy.limits.cpu_seconds == 60
    assert any("limits.memory_mb = 9999 ignored" in n for n in policy.ignored)


def test_a_symlink_in_the_repository_cannot_make_etc_writable(tmp_path):
    os.symlink("/etc", tmp_path / "out")
    project = write(tmp_path / "krate.toml", '[filesystem]\nallow_write = ["out", "build"]\n')
    policy = effective(tmp_path, tmp_path)
    assert policy.decide_write("/etc/passwd").verdict == "deny"
    assert Path("/etc") not in policy.allow_write
    assert any("`out` (-> /etc) ignored" in n for n in policy.ignored)
    trusted = effective(tmp_path, tmp_path, trusted={str(project): sha(project)})
    assert Path("/etc") in trusted.allow_write  # resolved: what the sandbox must bind


def test_project_file_is_found_walking_up_and_is_read_only(tmp_path):
    project = write(tmp_path / "krate.toml", "[limits]\nprocesses = 5\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project_file(deep) == project
    policy = effective(deep, tmp_path)
    assert policy.limits.processes == 5
    assert policy.decide_write(project).verdict == "deny"
    assert policy.workspace == deep
    assert find_project_file(Path("/proc/self")) is None


def test_builtins_hide_secret_stores_and_protect_files_that_run_later(tmp_path):
    for name in ("strict", "default", "open"):
        policy = effective(tmp_path / "ws", tmp_path, flags=Flags(policy=name))
        for store in SECRET_STORES:
            target = tmp_path / store[2:] / "x"
            assert policy.decide_read(target).verdict == "deny", (name, store)
            assert policy.decide_write(target).verdict == "deny", (name, store)
        for inside in (".git/hooks/post-checkout", ".git/config", "krate.toml", ".envrc"):
            assert policy.decide_write(tmp_path / "ws" / inside).verdict == "deny", inside
        for fine in (".git/objects/ab/cd", ".git/index", ".git/refs/heads/main", "src/x.py"):
            assert policy.decide_write(tmp_path / "ws" / fine).verdict == "allow", fine
        assert policy.decide_env("AWS_SECRET_ACCESS_KEY").verdict == "deny"
        assert policy.decide_env("GITHUB_TOKEN").verdict == "deny"
        assert policy.decide_env("HOME").verdict == "allow"
    assert effective(tmp_path, tmp_path, flags=Flags(policy="strict")).network_allow == ()
    assert set(effective(tmp_path, tmp_path).network_allow) == set(PACKAGE_REGISTRIES)


def test_private_dirs_are_hidden(tmp_path):
    data = tmp_path / "data"
    policy = effective_policy(
        workspace=tmp_path / "ws",
        home=tmp_path,
        user_policy_path=tmp_path / "u",
        trusted={},
        flags=Flags(),
        private_dirs=(data,),
    )
    assert policy.decide_read(data / "krate.db").rule == "krate's own data and configuration"


def test_hash_is_stable_and_tracks_the_rules(tmp_path):
    a = effective(tmp_path, tmp_path)
    b = effective(tmp_path, tmp_path)
    assert a.hash == b.hash and len(a.hash) == 64
    c = effective(tmp_path, tmp_path, flags=Flags(allow_host=("x.example",)))
    assert c.hash != a.hash
    assert a.to_dict()["hash"] == a.hash
