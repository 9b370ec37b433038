"""The krate files the egress proxy loads, sent over its stdin: only the stdlib on its path.

Why: the proxy can reach the network, so nothing but the standard library, its
own parts and krate's own decision code may ever be importable in it. It runs
`python -I -S` (no site-packages, no .pth files, no PYTHON* variables, not even
its own folder), so its path is the standard library alone; its parts beside
proxy.py and the few pure krate modules it decides with are named here, by their
exact files in krate's own installation, and sent with its configuration. The
proxy loads exactly those names from exactly those files (and their cached
bytecode, as any import would), after every standard finder (proxy.py, `Given`);
nothing is added to its path. A third-party package, or a `pathlib.py` planted
next to krate in site-packages (the folder krate is installed in, when it is not
an editable install), is never found there.

Chosen over copying the files to a private folder (which also works) because a
file created in /tmp costs about 0.3 ms here and this runs on every networked
`krate run`; over sending their source or bytecode over stdin (no folder either)
because the proxy would then compile them, or krate compress them, on every run;
and over compiling the decisions into data because the proxy then decides with
the very code `krate policy explain` uses.
"""

from __future__ import annotations

from pathlib import Path

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from typing import Any

SRC = Path(__file__).resolve().parent.parent.parent  # the folder holding the `krate` package
# The proxy's parts and what they and `krate.policy.decide` import, and nothing more (a test
# keeps this equal to their imports).
PARTS = (
    "krate/egress/dial.py",
    "krate/egress/handler.py",
    "krate/egress/listener.py",
    "krate/egress/names.py",
    "krate/egress/parsers.py",
    "krate/egress/relay.py",
    "krate/egress/workers.py",
    "krate/egress/wire.py",
)
MODULES = (
    *PARTS,
    "krate/canonical.py",
    "krate/errors.py",
    "krate/hostport.py",
    "krate/policy/decide.py",
    "krate/policy/hosts.py",
    "krate/policy/model.py",
    "krate/policy/paths.py",
    "krate/records.py",
    "krate/sha.py",  # decide.py's policy hash (krate's; the proxy never calls it)
)
# Served as empty packages: the real `krate/policy/__init__.py` loads the whole policy loader,
# `krate/egress/__init__.py` the run's egress session.
PACKAGES = ("krate", "krate.egress", "krate.policy")


def given() -> dict[str, dict[str, Any]]:
    """{module name: {"file": absolute source path} or {"package": True}}."""
    out: dict[str, dict[str, Any]] = {name: {"package": True} for name in PACKAGES}
    for rel in MODULES:
        out[rel[: -len(".py")].replace("/", ".")] = {"file": str(SRC / rel)}
    return out


def files() -> list[str]:
    """The source files the proxy may load besides the standard library."""
    return [str(SRC / rel) for rel in MODULES]
