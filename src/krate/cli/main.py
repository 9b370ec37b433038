"""Entry point: the fast `--version` path, then the Typer app behind one error boundary.

Every user-caused problem leaves as one `krate: ...` line on stderr with the exit
code from DESIGN.md; a traceback appears only for bugs, and only with KRATE_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

from krate import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        sys.stdout.write(f"krate {__version__}\n")
        return 0
    from krate.cli.app import app
    from krate.errors import EXIT_USAGE, KrateError

    try:
        result = app(args=args, prog_name="krate", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except KrateError as exc:
        _fail(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`krate audit list | head`): not an error of ours.
        _silence_stdout()
        return 0
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            # Typer's usage errors (unknown option, missing argument, bad value).
            _fail(exc.format_message())
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                sys.stderr.write(f"Try '{ctx.command_path} --help' for help.\n")
            return exc.exit_code or EXIT_USAGE
        if type(exc).__name__ == "Abort":
            sys.stderr.write("krate: aborted\n")
            return 1
        if os.environ.get("KRATE_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set KRATE_DEBUG=1 for the traceback)")
        return 1


def _fail(message: str) -> None:
    sys.stderr.write(f"krate: {message}\n")


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def run() -> None:
    sys.exit(main())
