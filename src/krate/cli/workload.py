"""What `krate run` and `krate build` do once their options are parsed, with no CLI framework.

Both entries read the options into one `Workload` and call `run_workload` /
`build_workload`: the parser in cli/fastrun.py, which must not import Typer
(start-up, and no third-party code before the lockdown), and the Typer commands,
which the tests' in-process entry uses.
"""

from __future__ import annotations

import os
from pathlib import Path

from krate.cli.common import lock_down, paths
from krate.records import NamedTuple

TYPE_CHECKING = False  # not `from typing import ...`: this module is on the run path
if TYPE_CHECKING:
    from krate.policy import Flags


class Workload(NamedTuple):
    """What one `krate run` or `krate build` was asked to do, whichever parser read it."""

    flags: Flags  # the policy options, as the policy's command-line layer
    command: list[str] | None = None
    workdir: Path | None = None
    image: str | None = None  # `--image IMAGE`, or `IMAGE -- CMD` (split_image)
    allow_hardlinked_secrets: bool = False
    as_root: bool = False
    allow_broad_workspace: bool = False
    verbose: bool = False
    quiet: bool = False  # no end-of-run summary of what was refused
    vm: bool = False  # `--vm`: the micro-VM backend (docs/vm.md)
    rootfs: Path | None = None  # with --vm: its root folder, until images name one
    out: list[str] | None = None  # the rest: `krate build` only
    input_: list[str] | None = None
    name: str | None = None

    @classmethod
    def parsed(cls, options: dict) -> Workload:
        """From the options by parameter name (cli/fastrun.py's, or the Typer command's)."""
        from krate.cli.policy_load import flags_from
        from krate.policy import Flags

        rest = dict(options)
        return cls(flags_from(**{name: rest.pop(name) for name in Flags._fields}), **rest)


def split_image(options: Workload) -> Workload:
    """`krate run [OPTIONS] IMAGE -- CMD`: a first word followed by `--` names an image.

    Both parsers keep the `--` that follows a first argument (click stops reading options
    there), so the split happens here, once, for both. `--image IMAGE` says the same.
    """
    command = list(options.command or [])
    if options.image is None and len(command) >= 2 and command[1] == "--":
        return options._replace(image=command[0], command=command[2:])
    return options


def prepare(options: Workload):
    """The effective policy and the run request shared by `krate run` and `krate build`.

    The request carries the lockdown, step 5 of the run's launch: krate's own process
    leaves the network once the workload is released.
    """
    from krate import render
    from krate.cli.policy_load import load_effective
    from krate.errors import EXIT_FAILURE, EXIT_KRATE_FAILED, KrateError
    from krate.runs import RunRequest

    _require_unlocked()
    command, allow_hardlinked_secrets = options.command, options.allow_hardlinked_secrets
    as_root, allow_broad_workspace = options.as_root, options.allow_broad_workspace
    cwd = (options.workdir or Path.cwd()).absolute()
    try:
        effective = load_effective(options.flags, cwd)
    except KrateError as exc:  # a bad policy file: krate failed before the workload, 125
        if exc.exit_code == EXIT_FAILURE:
            exc.exit_code = EXIT_KRATE_FAILED
        raise
    for note in effective.ignored:
        render.message(f"krate: note: {note}")
    image = None
    if options.image is not None:
        from krate.images import runtime

        image = runtime.open_for_run(paths(), options.image)
        command = list(runtime.argv_for(image, tuple(command or ())))
    request = RunRequest(
        argv=tuple(command),
        image=image,
        cwd=cwd,
        workspace=cwd,
        environ=dict(os.environ),
        allow_hardlinked_secrets=allow_hardlinked_secrets,
        as_root=as_root,
        allow_broad_workspace=allow_broad_workspace,
        lock_down=lock_down,
        backend=_vm_backend(options, image) if options.vm or options.rootfs else None,
    )
    return effective, request


def _vm_backend(options: Workload, image):
    """`--vm`: this platform's micro-VM backend (sandbox/vm.py), or a usage error.

    On an image (`krate run --vm IMAGE -- CMD`) the guest's root is the image's unpacked
    root; `--rootfs DIR` remains for a bare root folder."""
    from krate.sandbox import vm

    rootfs = image.rootfs if image is not None and options.rootfs is None else options.rootfs
    return vm.choose(options.vm, rootfs, paths().data_dir)


def _require_unlocked() -> None:
    """The sandbox and the egress proxy must start before krate's own lockdown.

    Only a line that cli/fastrun.py could not parse reaches the Typer command after
    the lockdown (the tests keep both parsers equal, so this is a safety net).
    """
    from krate.netguard import guard, lockdown

    if guard.installed() and lockdown.applied():
        from krate.errors import EXIT_KRATE_FAILED, KrateError

        raise KrateError(
            "krate could not read this command line before locking itself out of the "
            "network; write it as `krate run|build [OPTIONS] -- CMD [ARGS]...`",
            exit_code=EXIT_KRATE_FAILED,
        )


def report_denials(result, quiet: bool) -> None:
    """The end-of-run summary of what the policy refused (krate/denials.py), unless --quiet."""
    if quiet or not result.denials:
        return
    from krate import render
    from krate.denials import summary_lines

    for line in summary_lines(result.denials, result.stripped):
        render.message(line)


def report(result, effective, verbose: bool) -> None:
    """What krate says about a run on stderr: when asked, when it did not finish, or when it
    wrote a krate.toml (always: that file shapes later runs)."""
    from krate import render

    if verbose:
        render.message(
            f"krate: run {result.run_id}: exit {result.exit_code} after "
            f"{result.duration_s:.3f} s (policy {effective.name} {effective.hash[:12]})"
        )
        if result.stripped:
            render.message(f"krate: environment stripped: {', '.join(result.stripped)}")
        if result.hidden:
            render.message(f"krate: hidden: {', '.join(result.hidden)}")
        for note in result.notes:
            if note not in effective.ignored:
                render.message(f"krate: note: {note}")
    if result.status != "finished" or result.reason:  # e.g. the memory limit was reached
        render.message(f"krate: run {result.run_id} {result.status}: {result.reason}")
    if result.exit_code != 0:  # a path the workload was given but cannot see
        for hint in result.path_hints:
            render.message(f"krate: hint: {hint}")
    for path in result.policy_files_changed:
        render.message(
            f"krate: warning: {path} appeared or changed during this run; it applies to "
            "later runs in its folder: read it before you trust it"
        )
    if not result.policy_files_checked:
        render.message(
            "krate: note: looked for krate.toml files written by this run in part of the "
            "writable folders only (too many entries)"
        )


def run_workload(options: Workload) -> int:
    """Run the command under the effective policy; returns the workload's exit status."""
    from krate.errors import UsageError
    from krate.runs import execute

    options = split_image(options)
    if not options.command and options.image is None:
        raise UsageError("give the command to run after `--`, e.g. krate run -- npm install")
    effective, result = _launch(options, execute)
    report(result, effective, options.verbose)
    report_denials(result, options.quiet)
    return result.exit_code


def build_workload(options: Workload) -> int:
    """Run the build command as `run_workload` does, then record its outputs and provenance."""
    from krate import render
    from krate.errors import UsageError
    from krate.plural import counted
    from krate.provenance.build import run_build

    options = split_image(options)
    if not options.command and options.image is None:
        raise UsageError("give the build command after `--`, e.g. krate build --out dist -- make")
    if not options.out:
        raise UsageError("name at least one output with --out PATH (a file or a folder)")

    def start(paths, effective, request):
        outs, globs = options.out, options.input_ or ()
        return run_build(paths, effective, request, outs=outs, input_globs=globs, name=options.name)

    effective, (result, recorded) = _launch(options, start)
    report(result, effective, options.verbose)
    report_denials(result, options.quiet)
    if recorded.build is None:
        render.message(f"krate: no build recorded: {recorded.failed_reason}")
        return result.exit_code
    for skipped in recorded.skipped:
        render.message(f"krate: skipped {skipped} (not a regular file; links are not followed)")
    build = recorded.build
    label = f" ({build.name})" if build.name else ""
    render.message(
        f"krate: build {build.id}{label}: {counted(build.subjects, 'output')} recorded, "
        f"{recorded.new_blobs} new in the store; `krate provenance` shows the record"
    )
    return 0


def _launch(options: Workload, start):
    """The effective policy and what `start(paths, effective, request)` returned; krate's
    own process is locked out of the network afterwards, whatever happened."""
    effective, request = prepare(options)
    try:
        return effective, start(paths(), effective, request)
    finally:
        lock_down()  # also when the run was refused before anything started
