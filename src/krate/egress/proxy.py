"""The egress proxy: the one process that opens network connections for a sandboxed workload.

Why it exists: a sandboxed workload has an empty network namespace; its only way
out is this proxy, which decides every connection with the policy and reports
each one. It runs as its own small process, started before krate locks itself
out of the network, with an isolated interpreter (`python -I -S proxy.py`):
the standard library and nothing else on its path: no site-packages folder,
ever. Its own parts and the few pure krate policy modules it decides with are
named, with their exact files, in its configuration and loaded from those files
only, after every standard finder (helperlib.py, `Given`). Its ready line reports
its path, every module file it loaded and the modules it was given, for
`krate audit network --prove`.

It serves each client in a thread of its own with blocking sockets and
timeouts, and imports no asyncio: that import alone took about 30 ms of the
proxy's 50 ms start-up, which the first connection of a run waited for
(bench/bench_proxy_start.py; tests/test_helper_isolation.py keeps it out).

This file only starts it; the parts, each loaded by exact file:
- wire.py: the protocol with krate (configuration in, JSON lines out);
- listener.py: the Unix socket with the bridge's hand-over, or a loopback port;
- handler.py: one client (HTTP CONNECT, absolute-URI HTTP, SOCKS5), parsed by
  parsers.py (pure), dialled by dial.py, relayed by relay.py;
- names.py: the bridge's DNS lookups (may this name resolve in the sandbox).

It must never: record or log a URL path, query, header or body; resolve a name
before the decision; dial any address but the one it checked; connect to a
loopback, private, link-local or metadata address unless a rule names that
address (or `localhost`) explicitly; outlive its parent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading


class Given:
    """Finds the modules krate named, by exact name and file, after every standard finder."""

    def __init__(self, modules: dict) -> None:
        self.modules = modules

    def find_spec(self, name, path=None, target=None):
        entry = self.modules.get(name)
        if entry is None:
            return None
        if entry.get("package"):  # an empty package: only the named submodules below it
            from importlib.machinery import ModuleSpec

            spec = ModuleSpec(name, self, origin="krate", is_package=True)
            spec.submodule_search_locations = []
            return spec
        from importlib.util import spec_from_file_location

        return spec_from_file_location(name, entry["file"])  # uses its cached bytecode

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        pass  # the empty packages


def install_given(modules: dict) -> None:
    if modules:
        sys.meta_path.append(Given(modules))  # last: a standard name always wins


class Lines:
    """JSON lines from stdin: the modules given, then the configuration; the rest of stdin
    is the shutdown signal (wire.watch_stdin)."""

    def __init__(self) -> None:
        self.buffer = b""

    def __call__(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line.decode())


def serve(config, emit) -> None:
    from krate.egress.dial import Dialer
    from krate.egress.handler import Proxy
    from krate.egress.listener import Listener
    from krate.egress.names import Names
    from krate.egress.wire import watch_stdin

    dialer = Dialer(config.rules, config.net_default, config.connect_timeout, config.private_ok)
    proxy = Proxy(config, dialer, emit)
    names = Names(config.rules, dialer, proxy)  # asked only on the bridge's unix socket
    listener = Listener(
        config.listen, proxy.handle, proxy.start, config.header_timeout, names.__call__
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    address = listener.open(config.socket_uid)
    threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    emit.ready(config, address)
    while not stop.wait(1.0):  # woken by the signal handler too (it runs on this thread)
        pass
    listener.close()
    if not proxy.wait_idle(config.shutdown_grace):
        proxy.stop_all()
        proxy.wait_idle(1.0)
    listener.remove()
    emit({"type": "closed", "connections": proxy.count})


def main() -> int:
    # Ctrl-C reaches the whole process group; the proxy stops only when krate says so.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    read = Lines()
    # First the modules krate gives (sent at once), and every part imported: krate may
    # start the proxy before it has compiled the policy the configuration carries.
    first = read()
    install_given(first.get("given") or {})
    from krate.egress import dial  # noqa: F401 (imported early; explain decides with it too)

    if not first.get("explain"):  # explain decides and resolves: no listener, no relay
        from krate.egress import handler, listener, names  # noqa: F401 (imported early)
    from krate.egress.wire import Config, Emitter

    # `krate policy explain net` (resolve_early.py) sends its modules at its start, then the
    # policy and the host; everything in one line works too
    raw = first if "rules" in first else read()
    config = Config.from_dict(raw)
    emit = Emitter(config.journal_fd)
    if raw.get("explain"):  # `krate policy explain net`: one answer, no connection
        from krate.egress.dial import explain_once

        emit(explain_once(config, raw["explain"]))
        os._exit(0)
    serve(config, emit)
    # Every line is written (os.write, unbuffered) and every other thread is a daemon: skip
    # the interpreter's teardown, which krate's run would wait for (a name lookup still
    # running in its thread would hold it for its whole timeout).
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
