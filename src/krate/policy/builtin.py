"""The built-in profiles `strict`, `default` and `open`: the bottom layer of every policy.

They differ only in the network: `strict` has none, `default` reaches the
well-known package registries, `open` any host (still recorded). All three hide
the usual secret stores and agent sockets, keep files that run later outside the sandbox read-only
(in the workspace, in the home folder, and git's and the shell's at the top of every
writable folder), and strip secret-looking environment variables.
docs/policy.md lists every entry; keep the two in step.
"""

from __future__ import annotations

from pathlib import Path

from krate.policy.model import Item, Layer

# Secret stores hidden from every workload (read denied; writing there is denied too).
# `~` is $HOME and, when it differs, also the account's home (policy.layers). A `*` may
# end the last component: bubblewrap hides what matches when the run starts, Seatbelt
# the pattern itself (sandbox.spec, sandbox.seatbelt).
SECRET_STORES = (
    # keys and cloud credentials
    "~/.ssh",
    "~/.gnupg",
    "~/.aws",
    "~/.azure",
    "~/.config/gcloud",
    "~/.oci",
    "~/.kube",
    "~/.docker/config.json",
    "~/.vault-token",
    "~/.config/sops",
    "~/.terraform.d/credentials*",
    "~/.terraformrc",
    "~/.pulumi/credentials.json",
    "~/.fly/config.yml",
    "~/.cache/huggingface/token",
    "~/.huggingface/token",
    "~/.pki",
    # git, forges and package registries
    "~/.netrc",
    "~/.git-credentials",
    "~/.config/git/credentials",
    "~/.config/gh",
    "~/.config/hub",
    "~/.config/glab-cli",
    "~/.npmrc",
    "~/.yarnrc.yml",
    "~/.pypirc",
    "~/.cargo/credentials*",
    "~/.gem/credentials",
    "~/.composer/auth.json",
    "~/.config/composer/auth.json",
    "~/.m2/settings-security.xml",
    # databases
    "~/.pgpass",
    "~/.my.cnf",
    "~/.mylogin.cnf",
    # keyrings and password managers
    "~/Library/Keychains",
    "~/.local/share/keyrings",
    "~/.local/share/kwalletd",
    "~/.password-store",
    "~/.config/op",
    "~/.op",
    "~/.config/Bitwarden CLI",
    # shell and REPL histories: commands typed with passwords and tokens in them
    "~/.bash_history",
    "~/.zsh_history",
    "~/.zhistory",
    "~/.histfile",
    "~/.sh_history",
    "~/.bash_sessions",
    "~/.zsh_sessions",
    "~/.local/share/fish/fish_history",
    "~/.config/fish/fish_history",
    "~/.local/share/atuin",
    "~/.python_history",
    "~/.ipython/profile_default/history.sqlite",
    "~/.node_repl_history",
    "~/.psql_history",
    "~/.mysql_history",
    "~/.sqlite_history",
    "~/.rediscli_history",
    "~/.mongodb",
    "~/.dbshell",
    "~/.irb_history",
    "~/.lesshst",
    "~/.viminfo",
    # browsers and mail (cookies, saved passwords, sessions): Linux, snap, Flatpak
    "~/.mozilla",
    "~/snap/firefox/common/.mozilla",
    "~/.var/app/org.mozilla.firefox/.mozilla",
    "~/.config/google-chrome",
    "~/.config/google-chrome-beta",
    "~/.config/google-chrome-unstable",
    "~/.var/app/com.google.Chrome",
    "~/.config/chromium",
    "~/snap/chromium/common/chromium",
    "~/.var/app/org.chromium.Chromium",
    "~/.config/BraveSoftware",
    "~/snap/brave",
    "~/.var/app/com.brave.Browser",
    "~/.config/microsoft-edge",
    "~/.config/microsoft-edge-beta",
    "~/.config/microsoft-edge-dev",
    "~/.var/app/com.microsoft.Edge",
    "~/.config/vivaldi",
    "~/.config/opera",
    "~/.thunderbird",
    "~/snap/thunderbird/common/.thunderbird",
    # ... and macOS
    "~/Library/Application Support/Google/Chrome",
    "~/Library/Application Support/Google/Chrome Beta",
    "~/Library/Application Support/Google/Chrome Canary",
    "~/Library/Application Support/Chromium",
    "~/Library/Application Support/BraveSoftware",
    "~/Library/Application Support/Microsoft Edge",
    "~/Library/Application Support/Microsoft Edge Beta",
    "~/Library/Application Support/Vivaldi",
    "~/Library/Application Support/com.operasoftware.Opera",
    "~/Library/Application Support/Arc",
    "~/Library/Application Support/Firefox",
    "~/Library/Safari",
    "~/Library/Containers/com.apple.Safari",
    "~/Library/Cookies",
    "~/Library/Thunderbird",
    # crypto wallets (a favourite target of malicious packages)
    "~/.bitcoin/wallets",
    "~/.bitcoin/wallet.dat",
    "~/.electrum",
    "~/.ethereum/keystore",
    "~/.config/solana",
    "~/.config/Exodus",
    "~/Library/Application Support/Exodus",
    # krate's own data and configuration in their default places (also hidden wherever
    # KRATE_HOME puts them, and under the real home when $HOME was changed)
    "~/.local/share/krate",
    "~/.config/krate",
    "~/Library/Application Support/krate",
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

# Secret-looking variable names: stripped from the workload's environment, and the
# same list names the flags and NAME=VALUE arguments whose values krate.redact masks in
# recorded command lines, so the two cannot drift. Case is ignored. A flag is matched
# as `_NAME` (`--token` as `_TOKEN`), so `*_TOKEN` covers it and `AWS_*` does not
# cover `--aws-region`.
SECRET_ENV = (
    # cloud credential families
    "AWS_*",
    "AZURE_*",
    "GOOGLE_APPLICATION_CREDENTIALS",  # a path, but to a key file: the pointer goes too
    # tokens
    "TOKEN_*",
    "*TOKEN",  # GITHUB_TOKEN, AUTHTOKEN, npm_config_//host/:_authToken
    "*_TOKEN_*",
    "*_PAT",  # GH_PAT: personal access tokens
    # passwords and passphrases
    "PASS",
    "*_PASS",  # DB_PASS
    "*_PASS_*",
    "*_PWD",  # DB_PWD, MYSQL_PWD (PWD and OLDPWD, the working folders, do not match)
    "*PASSWORD*",
    "*PASSWD*",
    "*PASSPHRASE*",
    # secrets, keys and credentials
    "*SECRET*",
    "*APIKEY*",
    "*API_KEY*",
    "*ACCESS_KEY*",
    "*ACCESSKEY*",
    "*PRIVATE_KEY*",
    "*PRIVATEKEY*",
    "*SIGNING_KEY*",
    "*ENCRYPTION_KEY*",
    "*MASTER_KEY*",
    "*CREDENTIAL*",  # CREDENTIALS, GOOGLE_CREDENTIALS, *_CREDENTIALS_FILE
    # authentication
    "AUTH",
    "*_AUTH",  # NPM_CONFIG__AUTH, npm_config_//host/:_auth
    "*_AUTH_CONFIG",  # DOCKER_AUTH_CONFIG
    "*AUTHORIZATION*",
    "COOKIE",
    "*_COOKIE",  # SESSION_COOKIE (not *COOKIE*: COOKIECUTTER_CONFIG is a path)
    "*_COOKIE_*",
    "*WEBHOOK*",
    "SSH_AUTH_SOCK",
    # connection strings that carry passwords
    "*DATABASE_URL",
    "*_DSN",
)

# Names kept even when a pattern above matches (`AWS_CA_BUNDLE`): paths to CA
# certificates, which TLS needs and which are public. Their values are still checked
# against the credential shapes, unlike a name the user passes.
KEEP_ENV = (
    "*_CA_BUNDLE",
    "*_CA_CERTS",
    "*_CAINFO",
    "*_CAFILE",
    "*_CAPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
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
        read_only=tuple(
            Item(p) for p in (*WORKSPACE_READ_ONLY, *(f"~/{name}" for name in SHELL_STARTUP))
        ),
        net_allow=network_items(name),
        env_strip=tuple(Item(p) for p in (*SECRET_ENV, *SOCKET_ENV)),
        env_pass=tuple(Item(p) for p in KEEP_ENV),
    )
