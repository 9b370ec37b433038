"""The built-in profiles `strict`, `default` and `open`: the bottom layer of every policy.

They differ only in the network: `strict` has none, `default` reaches the
well-known package registries, `open` any host (still recorded). All three hide
the usual secret stores, keep files that run later outside the sandbox read-only
(in the workspace, in the home folder, and git's and the shell's at the top of every
writable folder), and strip secret-looking environment variables.
docs/policy.md lists every entry; keep the two in step.
"""

from __future__ import annotations

from pathlib import Path

from krate.policy.model import Item, Layer

# Secret stores hidden from every workload (read denied; writing there is denied too).
SECRET_STORES = (
    "~/.ssh",
    "~/.aws",
    "~/.gnupg",
    "~/.config/gh",
    "~/.netrc",
    "~/.docker/config.json",
    "~/.kube",
    "~/.npmrc",
    "~/.pypirc",
    "~/Library/Keychains",
    "~/Library/Application Support/Google/Chrome",
    "~/Library/Application Support/Firefox",
    "~/Library/Safari",
    "~/.mozilla",
    "~/.config/google-chrome",
    "~/.config/chromium",
)

# In a git folder: the names that make git, run later outside the sandbox, read another
# configuration or run programs (sandbox/gitguard.py keeps them read-only in every writable
# git folder, holding missing ones with placeholders on Linux).
GIT_READ_ONLY = (
    "config",
    "config.worktree",
    "commondir",
    "gitdir",
    "hooks",
    "info",
    "modules",
    "worktrees",
)

# Inside the workspace: files that git, the shell or krate itself act on later, outside the sandbox.
WORKSPACE_READ_ONLY = (*(f".git/{name}" for name in GIT_READ_ONLY), "krate.toml", ".envrc")

# Files a shell, a login or git reads as code or configuration later, outside the sandbox:
# read-only in the home folder and at the top of every writable folder.
SHELL_STARTUP = (
    ".profile",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".bash_aliases",
    ".zshenv",
    ".zprofile",
    ".zshrc",
    ".zlogin",
    ".zlogout",
    ".kshrc",
    ".mkshrc",
    ".cshrc",
    ".tcshrc",
    ".login",
    ".logout",
    ".config/fish",
    ".inputrc",
    ".pam_environment",
    ".config/environment.d",
    ".config/autostart",
    ".config/systemd/user",
    ".gitconfig",
    ".config/git",
)

# The `default` profile's network: the well-known package registries (web ports 80 and 443).
PACKAGE_REGISTRIES = (
    # npm
    "registry.npmjs.org",
    # PyPI and its file host
    "pypi.org",
    "files.pythonhosted.org",
    # Rust crates: registry, sparse index, downloads
    "crates.io",
    "index.crates.io",
    "static.crates.io",
    # Go module proxy and checksum database
    "proxy.golang.org",
    "sum.golang.org",
    # RubyGems
    "rubygems.org",
    "index.rubygems.org",
    # GitHub and its content hosts
    "github.com",
    "api.github.com",
    "codeload.github.com",
    "*.githubusercontent.com",
)

# Secret-looking variable names stripped from the workload's environment.
SECRET_ENV = (
    "AWS_*",
    "AZURE_*",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "TOKEN",
    "*_TOKEN",
    "*_TOKEN_*",
    "SECRET*",
    "*_SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "API_KEY",
    "*_API_KEY",
    "*_APIKEY",
    "*_ACCESS_KEY*",
    "*_PRIVATE_KEY*",
    "*_CREDENTIALS*",
    "SSH_AUTH_SOCK",
    "DATABASE_URL",
    "*_DSN",
)

PROFILES: dict[str, tuple[str, ...]] = {
    "strict": (),
    "default": PACKAGE_REGISTRIES,
    "open": ("*:*",),
}

DESCRIPTIONS = {
    "strict": "no network; secret stores hidden; writes only in the workspace",
    "default": "package registries only; secret stores hidden; writes only in the workspace",
    "open": "any host (still recorded); secret stores hidden; writes only in the workspace",
}

BASE = "default"


def network_items(name: str) -> tuple[Item, ...]:
    return tuple(Item(text) for text in PROFILES[name])


def builtin_layer(name: str, workspace: Path) -> Layer:
    """The bottom layer for profile `name`, with relative entries anchored at the workspace."""
    return Layer(
        name=f"builtin:{name}",
        trusted=True,
        base_dir=workspace,
        deny_read=tuple(Item(p) for p in SECRET_STORES),
        read_only=tuple(
            Item(p) for p in (*WORKSPACE_READ_ONLY, *(f"~/{name}" for name in SHELL_STARTUP))
        ),
        net_allow=network_items(name),
        env_strip=tuple(Item(p) for p in SECRET_ENV),
    )
