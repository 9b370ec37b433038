"""`--help` without rich when the output is not a terminal: the same text, no boxes.

Typer renders help with rich: about 55 ms of imports (rich, markdown-it, pygments)
for boxes and colour that a pipe, a file or a coding agent's tool call never shows
(`krate --help` took 117 ms where `python -c pass` takes 9). Off a terminal, this
module prints the same words in the same order, in aligned columns without the
boxes; on a terminal Typer's rich help stays. tests/test_cli_polish.py checks that
every command's help says exactly what rich says. Anything this renderer does not
know (a deprecated command, an epilog, Markdown) is left to rich.
"""

from __future__ import annotations

import inspect
import textwrap

WIDTH = 80
HELP_OPTIONS = ("-h", "--help")


def install(core) -> None:
    """Route `typer.core`'s help rendering here (once; for output that is not a terminal)."""
    for cls in (core.TyperCommand, core.TyperGroup):
        original = cls.format_help
        if getattr(original, "plain", False):
            continue

        def format_help(self, ctx, formatter, _original=original):
            text = render(self, ctx)
            if text is None:
                return _original(self, ctx, formatter)
            formatter.write(text)

        format_help.plain = True
        cls.format_help = format_help


def render(command, ctx) -> str | None:
    """The help of `command` as plain text, or None to leave it to rich."""
    if (
        command.deprecated
        or command.epilog
        or getattr(command, "rich_markup_mode", "rich") != ("rich")
    ):
        return None
    out = ["", f" {command.get_usage(ctx)}", ""]
    if command.help:
        first, *rest = inspect.cleandoc(command.help).partition("\f")[0].split("\n\n")
        if first.startswith("\b") or any(p.startswith("\b") for p in rest):
            return None
        out += _wrap(first.replace("\n", " ").strip(), 1)
        if rest:
            out.append("")
            for i, paragraph in enumerate(rest):
                out += [""] * (i > 0) + _wrap(paragraph.strip(), 1)
        out.append("")
    panels: dict[tuple[str, str], list] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        kind = "Arguments" if param.param_type_name == "argument" else "Options"
        title = getattr(param, "rich_help_panel", None) or kind
        panels.setdefault((kind, title), []).append(param)
    order = sorted(panels, key=lambda k: (k[0] != "Arguments", k[1] != k[0]))
    for kind, title in order:
        rows = [_param_row(p, ctx) for p in panels[(kind, title)]]
        if any(row is None for row in rows):
            return None
        out += _table(title, rows)
    if hasattr(command, "list_commands"):
        commands = [command.get_command(ctx, name) for name in command.list_commands(ctx)]
        commands = [c for c in commands if c is not None and not c.hidden]
        if any(getattr(c, "rich_help_panel", None) or c.deprecated for c in commands):
            return None
        rows = [[c.name or "", _command_help(c)] for c in commands]
        if rows:
            out += _table("Commands", rows)
    return "\n".join(out) + "\n"


def _param_row(param, ctx) -> list[str] | None:
    """[names, short names, secondary names, metavar, help]: rich's columns, in its order."""
    argument = param.param_type_name == "argument"
    name = (param.metavar or param.name or "") if argument else None
    long_, short, second = [], [], []
    for opt in param.opts:
        (long_ if "--" in opt else short).append(opt if "--" in opt or not name else name)
    for opt in param.secondary_opts:
        second.append(opt)
    if argument:
        types = param.type.get_metavar(param=param, ctx=ctx) or f"<{param.type.name}>"
    else:
        types = param.make_metavar(ctx=ctx)
    types = types if types and "bool" not in types.lower() else ""
    describe = getattr(param.type, "_describe_range", None)
    if (
        describe is not None
        and not argument
        and not (param.count and param.type.min == 0 and param.type.max is None)
    ):
        range_str = describe()
        types += f" [{range_str}]" if range_str else ""
    help_ = []
    if param.help:
        paragraphs = param.help.split("\n\n")
        if any(p.startswith("\b") for p in paragraphs):
            return None
        help_.append("\n".join(p.replace("\n", " ").strip() for p in paragraphs).strip())
    envvar = getattr(param, "envvar", None)
    if envvar is None and getattr(param, "allow_from_autoenv", None) and param.name:
        envvar = None if ctx.auto_envvar_prefix is None else param.name
    if envvar and getattr(param, "show_envvar", None):
        return None  # rich's env var display: krate shows none, left to rich
    default_value = param._extract_default_help_str(ctx=ctx)
    show_str = isinstance(param.show_default, str)
    if show_str or (default_value is not None and (param.show_default or ctx.show_default)):
        shown = param._get_default_string(
            ctx=ctx, show_default_is_str=show_str, default_value=default_value
        )
        if shown:
            help_.append(f"[default: {shown}]")
    if param.required:
        help_.append("[required]")
    star = "*" if param.required else ""
    return [star, ",".join(long_), ",".join(short), ",".join(second), types, " ".join(help_)]


def _command_help(command) -> str:
    text = command.short_help or command.help or ""
    first = inspect.cleandoc(text).split("\n\n")[0]
    return first.replace("\b\n", "").strip()


def _table(title: str, rows: list[list[str]]) -> list[str]:
    """Rows in aligned columns under the panel's title, the last column wrapped."""
    if rows and len(rows[0]) == 6 and not any(row[0] for row in rows):
        rows = [row[1:] for row in rows]  # rich adds the `*` column only when needed
    columns = len(rows[0])
    widths = [max(len(row[i]) for row in rows) for i in range(columns - 1)]
    used = [i for i in range(columns - 1) if widths[i]]
    indent = 2 + sum(widths[i] + 2 for i in used)
    out = [title]
    for row in rows:
        lead = "  " + "".join(row[i].ljust(widths[i]) + "  " for i in used)
        text = textwrap.wrap(row[-1], max(WIDTH - indent, 20), break_on_hyphens=False,
                             break_long_words=False) or [""]  # fmt: skip
        out.append((lead + text[0]).rstrip())
        out += [" " * indent + line for line in text[1:]]
    out.append("")
    return out


def _wrap(text: str, indent: int) -> list[str]:
    lines = []
    for line in text.split("\n"):
        lines += textwrap.wrap(line, WIDTH - 2 * indent, break_on_hyphens=False,
                               break_long_words=False) or [""]  # fmt: skip
    return [" " * indent + line for line in lines]
