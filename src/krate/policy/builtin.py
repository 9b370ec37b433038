"""The built-in profiles `strict`, `default` and `open`: the bottom layer of every policy.

They differ only in the network: `strict` has none, `default` reaches the
well-known package registries, `open` any host (still recorded). All three hide
the usual secret stores and agent sockets, keep files that run later outside the sandbox read-only
inside the workspace, and strip secret-looking environment variables.
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

# Agent and daemon sockets outside /run and /tmp (which the Linux sandbox already empties): a
# Unix socket on a read-only mount can still be connected to. Where a folder holds nothing a
# workload needs, the whole folder, so that a socket created after the run started is hidden too.
AGENT_SOCKETS = (
    "~/.1password",  # 1Password's SSH agent (agent.sock)
    "~/Library/Group Containers/2BUA8C4S2C.com.1password/t",
    "~/.bitwarden-ssh-agent.sock",
    "~/Library/Containers/com.maxgoedjen.Secretive.SecretAgent/Data",
    "~/.docker/run",  # Docker Desktop (macOS)
    "~/.docker/desktop",  # Docker Desktop (Linux)
    "~/Library/Containers/com.docker.docker/Data",
    "~/.colima",
    "~/.lima",
    "~/.rd",  # Rancher Desktop
    "~/.orbstack",
    "~/.local/share/containers/podman/machine",
)

# Inside the workspace: files that git, the shell or krate itself act on later, outside the sandbox.
WORKSPACE_READ_ONLY = (".git/hooks", ".git/config", "krate.toml", ".envrc")

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

# Variables that name an agent's or a daemon's socket (or address): stripped, and the socket
# file they name hidden (runs.py). Any other variable whose value names a socket is too.
SOCKET_ENV = (
    "GPG_AGENT_INFO",
    "DOCKER_HOST",
    "CONTAINER_HOST",
    "BUILDKIT_HOST",
    "DBUS_SESSION_BUS_ADDRESS",
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
        deny_read=tuple(Item(p) for p in (*SECRET_STORES, *AGENT_SOCKETS)),
        read_only=tuple(Item(p) for p in WORKSPACE_READ_ONLY),
        net_allow=network_items(name),
        env_strip=tuple(Item(p) for p in (*SECRET_ENV, *SOCKET_ENV)),
    )
