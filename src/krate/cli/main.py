"""Entry point: the fast `--version` path, the network lockdown, then the Typer app.

Every user-caused problem leaves as one `krate: ...` line on stderr with the exit
code from DESIGN.md; a traceback appears only for bugs, and only with KRATE_DEBUG=1.

When krate runs as a program, the network guard is installed and the kernel
lockdown applied here, before typer or any third-party package is imported.
login and push start their registry transport first, doctor its sandbox test
command (macOS refuses a sandbox inside the lockdown's own); run and build (parsed
without Typer, cli/fastrun.py) start their sandbox and egress proxy first and
then call `krate.netguard.lockdown.apply()` themselves, and until then only krate
and the standard library can be imported (`lockdown.hold_imports()`).
`audit network --prove` starts its real runs of run and build the same way
(netguard/proof_early.py), then locks down. `main(argv)`
called in-process (the tests' `cli` fixture) leaves the calling process alone: a
lockdown cannot be undone.
"""

from __future__ import annotations

import gc
import os
import sys

from krate import __version__

# Commands that start a sandbox of their own before locking down (not a network purpose:
# the sandbox cannot be started inside the macOS lockdown, which is a Seatbelt profile).
EARLY_SANDBOX = ("doctor",)


def main(argv: list[str] | None = None, *, protect: bool | None = None) -> int:
    """Run one krate command; `protect` (default: when argv comes from sys.argv) locks down."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        sys.stdout.write(f"krate {__version__}\n")
        return 0
    if "_KRATE_COMPLETE" in os.environ:
        # A TAB press: command and option names come from a table, without Typer, no file
        # read and no store opened (cli/quickcomplete.py); the rest is Typer's, below.
        from krate.cli import quickcomplete

        code = quickcomplete.answer(os.environ)
        if code is not None:
            return code
    if protect is None:
        protect = argv is None
    if protect:
        # Start-up allocates some 200,000 objects (module code, classes, Typer's tree) and
        # frees almost none: the collector's passes over them cost ~5% of a light command.
        # Collection resumes once the command itself starts (cli/common.py started()).
        gc.disable()
    held = protect and _protect(args)
    if protect:
        import atexit

        atexit.register(_settle_at_exit, args)
    try:
        code = _dispatch(args)
    except SystemExit as exc:  # shell completion leaves through sys.exit()
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    if protect:
        _after_command(args, held)
    if protect and _settle_guard(args):
        return 1
    return code


def _protect(args: list[str]) -> bool:
    """Guard always; lockdown before any third-party import, after the unlocked children.

    login/push/image pull: the registry transport starts here, then the lockdown. doctor: its
    sandbox test command starts here (krate and the standard library only), then
    the lockdown; on macOS the lockdown is a Seatbelt profile, inside which
    sandbox-exec is refused. audit network --prove: its real runs of run and build
    start here, then the lockdown (netguard/proof_early.py). policy explain net: the
    resolver of its name is forked here, before the guard, and the command locks down
    once it answered (resolve_early.py; returns True). run/build
    that cli/fastrun.py parsed: third-party imports are held until the command has
    started its sandbox and proxy and locked down (returns True). Anything else:
    locked down now.
    """
    from krate.netguard import guard, lockdown

    completing = "_KRATE_COMPLETE" in os.environ
    if not completing and _explains_net(args) and _parsed_fast(args):
        # Its resolver is a copy of krate forked before the guard (an audit hook it could
        # not shed) with krate and the standard library loaded; the command locks down
        # once the name is resolved, before it prints (resolve_early.Forked, cli/views.py).
        lockdown.hold_imports()
        from krate import resolve_early

        resolve_early.fork_early()
        guard.install()
        return True
    guard.install(record=not completing)
    command = None if completing else _starts_children(args, lockdown.DEFERRED_COMMANDS)
    if command in ("run", "build"):
        from krate.cli import fastrun

        if fastrun.parse(args) is not None:
            lockdown.hold_imports()
            return True
    elif command is not None:
        from krate.registry import early  # not cli.common: its paths and pathlib come later

        early.start(args)  # standard library only; the command takes it over
    elif not completing and _proves(args):
        # Its real runs of run and build must not be born inside this lockdown (they
        # start a sandbox that needs its own loopback); krate and stdlib only until then.
        lockdown.hold_imports()
        from krate.netguard import proof_early

        proof_early.start(os.environ)
    elif not completing and _explains_net(args):
        from krate import resolve_early

        resolve_early.start_early()  # a line Typer parses: through the egress proxy
    elif not completing and _starts_children(args, EARLY_SANDBOX) is not None:
        lockdown.hold_imports()  # until apply(): krate and the standard library only
        from krate import doctor_trial

        doctor_trial.start_early(os.environ.get("PATH"))  # the command takes it over
    lockdown.apply()
    return False


def _explains_net(args: list[str]) -> bool:
    """`krate policy explain net ...`: its name is resolved by a helper born unlocked."""
    if args[:2] != ["policy", "explain"] or args[-1:] in (["--help"], ["-h"]):
        return False  # every other command, and its help: not even the module is loaded
    from krate import resolve_early

    return resolve_early.wanted(args)


def _parsed_fast(args: list[str]) -> bool:
    """cli/fastread.py takes the line (no Typer, which cannot load while imports are held)."""
    from krate.cli import fastread

    return fastread.parse(args) is not None


def _proves(args: list[str]) -> bool:
    """`krate audit network --prove` that will really run (not print help)."""
    words = [a for a in args if not a.startswith("-")]
    asks_help = "-h" in args or "--help" in args
    return words[:2] == ["audit", "network"] and "--prove" in args and not asks_help


def _after_command(args: list[str], held: bool) -> None:
    """Lock down (a deferred command that stopped early), settle what it deferred."""
    from krate.netguard import lockdown

    resolver = sys.modules.get("krate.resolve_early")
    if resolver is not None:
        resolver.abandon()  # explain's resolver, when explain did not take it: before the lockdown
    lockdown.apply()
    if held:
        try:
            _settle_deletions()  # may load keyring: only now, after the lockdown
        except Exception as exc:
            _fail(f"could not purge expired deleted data: {exc}")
    common = sys.modules.get("krate.cli.common")
    if common is not None:
        common.abandon_transport()  # the registry's transport, when the command did not take it
    early = sys.modules.get("krate.netguard.proof_early")
    if early is not None:
        early.abandon()  # real runs of a proof that stopped before taking them


def _starts_children(args: list[str], deferred) -> str | None:
    """The deferred command that will really run (not only print its help), if any."""
    index = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if index is None:
        return None
    name, rest = args[index], index + 1
    if name not in deferred:  # a group's command: `image pull`
        sub = args[rest] if rest < len(args) else ""
        if f"{name} {sub}" not in deferred:
            return None
        name, rest = f"{name} {sub}", rest + 1
    for token in args[rest:]:
        if token in ("-h", "--help"):
            return None
        if token == "--" or not token.startswith("-"):
            break  # the workload's own arguments (or an option value) from here on
    return name


def _settle_guard(args: list[str]) -> bool:
    """Record what the guard refused (if anything) and tell the caller to exit 1."""
    from krate.netguard import guard

    found = guard.take_violations()
    if not found:
        return False
    if guard.should_record():
        try:
            from krate.cli.common import paths
            from krate.store import open_store

            with open_store(paths()) as store:
                guard.record(store, found, _command_name(args))
        except Exception as exc:
            _fail(f"could not record the refused network access: {exc}")
    _fail(
        f"stopped: code in this process tried to reach the network ({len(found)} attempt"
        f"{'s' if len(found) != 1 else ''} refused, first: {found[0].describe()}); "
        "see `krate audit list --kind guard.`"
    )
    return True


def _settle_at_exit(args: list[str]) -> None:
    """A refusal after main() returned (a thread, an exit handler) still makes krate exit 1.

    Runs once the other threads were joined; from then on the guard ends the process
    with 1 at the first refusal itself (a daemon thread may still run briefly).
    """
    from krate.netguard import guard

    failed = _settle_guard(args)
    guard.seal()
    if failed:
        for stream in (sys.stdout, sys.stderr):
            try:  # noqa: SIM105 (contextlib costs ~2 ms of every start, for this)
                stream.flush()
            except Exception:
                pass
        os._exit(1)


def _command_name(args: list[str]) -> str:
    try:
        import typer

        from krate.cli.app import app
        from krate.netguard.commands import command_path

        return " ".join(("krate", *command_path(typer.main.get_command(app), args)))
    except Exception:
        return "krate"


def _dispatch(args: list[str]) -> int:
    from krate.errors import EXIT_USAGE, KrateError

    completing = "_KRATE_COMPLETE" in os.environ
    try:
        if not completing and args[-1:] in (["--help"], ["-h"]):
            # Off a terminal: Typer's help text from a table (cli/quickhelp.py), without
            # Typer and without settling deletions (help changes nothing; the next
            # command settles them).
            from krate.cli import quickhelp

            text = quickhelp.text(args)
            if text is not None:
                sys.stdout.write(text)
                return 0
        # `krate data` settles deletions itself (restore explains an expired one), and
        # `krate doctor` reports them as they are.
        from krate.netguard import lockdown

        # Deferred run/build settle them after their lockdown (_after_deferred).
        held = lockdown.imports_held()
        if not completing and not held and _first_word(args) not in ("data", "doctor"):
            _settle_deletions()
        fast = None
        if not completing and args[:1] in (["run"], ["build"]):  # fastrun.TABLES' commands
            from krate.cli import fastrun  # ~6 ms: only for the commands it parses

            fast = fastrun.parse(args)
        if fast is not None:
            from krate.cli import workload

            options = workload.Workload.parsed(fast)
            if args[0] == "build":
                return workload.build_workload(options)
            return workload.run_workload(options)
        if not completing:
            # The light read-only commands: parsed without Typer (cli/fastread.py), after
            # the guard and lockdown, as Typer's route; anything unusual goes to Typer.
            from krate.cli import fastread

            light = fastread.parse(args)
            if light is not None:
                return fastread.run(light)
        return _typer(args, completing)
    except KrateError as exc:
        _fail(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError as exc:
        if _stdout_gone():
            # The reader went away (`krate audit list | head`): not an error of ours.
            _silence_stdout()
            return 0
        # One of krate's own pipes (to a helper it started): a failure, never a quiet 0.
        if os.environ.get("KRATE_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set KRATE_DEBUG=1 for the traceback)")
        return _failed(args, 1)
    except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        # A file or folder the user named (or KRATE_HOME) that cannot be used as it is.
        if os.environ.get("KRATE_DEBUG"):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        reason = (exc.strerror or type(exc).__name__).lower()
        _fail(f"cannot use{where}: {reason}; check its permissions, or choose another path")
        return _failed(args, 1)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            # Typer's usage errors (unknown option, missing argument, bad value): one line.
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            if getattr(exc, "possibilities", None) and getattr(exc, "option_name", None):
                exc.possibilities = _close_options(exc.option_name, exc.possibilities)
            _fail(" ".join(exc.format_message().split()) + hint)
            return exc.exit_code or EXIT_USAGE
        if type(exc).__name__ == "Abort":
            sys.stderr.write("krate: aborted\n")
            return 1
        if type(exc).__name__ == "NetworkRefused":
            return 1  # the guard has already said what was refused and who tried
        if os.environ.get("KRATE_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set KRATE_DEBUG=1 for the traceback)")
        return _failed(args, 1)


def _typer(args: list[str], completing: bool) -> int:
    """Typer's route: parse `args` with the app, mounting only the command named."""
    if os.environ.get("NO_COLOR"):
        # Typer's help honours NO_COLOR for colours but still writes bold; this, read
        # when its help module is imported, keeps every escape code out (no rich import).
        os.environ.setdefault("_TYPER_FORCE_DISABLE_TERMINAL", "1")
    from krate.cli.app import build

    app = build(None if completing else _first_word(args), root_help=_root_help(args))
    result = app(args=args, prog_name="krate", standalone_mode=False)
    return result if isinstance(result, int) else 0


def _close_options(typed: str, options: list[str]) -> list[str]:
    """Only the options close to what was typed: click's cut-off lets `--bogus` suggest
    `--verbose`, because the shared `--` counts as a match."""
    import difflib

    bare = {option.lstrip("-"): option for option in options}
    close = difflib.get_close_matches(typed.lstrip("-"), list(bare), n=3, cutoff=0.75)
    return [bare[name] for name in close]


def _failed(args: list[str], code: int) -> int:
    """The exit code for an unexpected error: 125 (krate failed) for `run` and `build`."""
    return 125 if code == 1 and _first_word(args) in ("run", "build") else code


def _root_help(args: list[str]) -> bool:
    """`krate --help` (not a TAB press): only the list of commands is printed."""
    return args in (["--help"], ["-h"]) and "_KRATE_COMPLETE" not in os.environ


def _first_word(args: list[str]) -> str | None:
    """The command named on the line (the first word that is not an option), if any."""
    return next((arg for arg in args if not arg.startswith("-")), None)


def _settle_deletions() -> None:
    """Purge deleted data past its 7-day grace period: one stat when nothing is pending."""
    from krate import privacy
    from krate.cli.common import paths

    where = paths()
    if not os.path.lexists(privacy.pending_area(where)):
        return
    from datetime import UTC, datetime

    from krate.privacy import keychain
    from krate.registry.keychain import backend_name

    keychain.configure(backend_name(os.environ))
    privacy.purge_expired(where, datetime.now(UTC))


def _fail(message: str) -> None:
    sys.stderr.write(f"krate: {message}\n")


def _stdout_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has closed it (POLLERR/POLLHUP)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        pass
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # errors and hang-ups are always reported
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def run() -> None:
    _exit(main())


def _exit(code: int) -> None:
    """Leave as `sys.exit(code)` would, without tearing down the interpreter's modules.

    Tearing down some 150 modules costs about 4 ms of every command, for nothing:
    the store is closed and committed, helper processes are stopped and files are
    closed by then. What a normal exit does that matters is done here first: exit
    handlers (the guard's settlement, tempfile's clean-ups) run, and buffered output
    is flushed. A live non-daemon thread (joined by a normal exit) or output that
    cannot be flushed (reported by a normal exit) takes the normal way out.
    """
    threading = sys.modules.get("threading")
    if threading is not None and any(
        t.is_alive() and not t.daemon and t is not threading.main_thread()
        for t in threading.enumerate()
    ):
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()  # and forgets them: a normal exit from here runs none twice
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except Exception:
        sys.exit(code)
    os._exit(code)
