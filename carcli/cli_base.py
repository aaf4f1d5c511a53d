"""The click/Typer classes every carcli command runs in: plain value names in the help (no Python
types, no `<bool>`), and every error turned into one line on stderr and an exit code."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

try:  # typer >= 0.20 ships its own copy of click; its exceptions are the ones raised
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer uses click itself
    import click  # type: ignore[no-redef]

from carcli.console import print_error, print_stopped
from carcli.errors import CarcliError, Interrupted, fault, one_line


class PlainArgument(TyperArgument):
    """A positional argument shown as NAME ([NAME] when optional, NAME... for several), never as a Python type."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw.upper()
        name = name if self.required else f"[{name}]"
        return name if self.nargs == 1 else f"{name}..."

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None


def plain_metavars(params: list[click.Parameter], ctx: click.Context) -> list[click.Parameter]:
    """Help names values plainly: no `<bool>` after on/off flags, no Python types (`<list[Path]>`, `{checkpoint}`)."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.__class__ = PlainArgument
        elif isinstance(param, TyperOption) and param.metavar is None:
            if param.is_flag:
                param.metavar = ""
            elif param.multiple:
                param.metavar = re.sub(r"list\[(\w+)\]", r"\1", param.display_type_rich(ctx) or "").lower()
    return params


class CarcliCommand(TyperCommand):
    """Every carcli subcommand: plain value names in its help."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return plain_metavars(super().get_params(ctx), ctx)


class CarcliGroup(TyperGroup):
    """Runs the app and turns every user error into one line on stderr and an exit code."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        debug = os.environ.get("CARCLI_DEBUG") == "1"
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
            code = result if isinstance(result, int) else 0
        except click.ClickException as exc:
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else "carcli"
            if exc.format_message():  # empty after `carcli` alone, which has printed the help
                print_error(f"{exc.format_message()} (see `{command} --help`)")
            code = exc.exit_code
        except typer.Abort:
            print_stopped("aborted (Ctrl-C)")
            code = 130
        except Interrupted as exc:
            print_stopped(str(exc))
            code = exc.exit_code
        except CarcliError as exc:
            if debug:
                raise
            print_error(one_line(str(exc)))
            code = exc.exit_code
        except Exception as exc:
            if debug:
                raise
            known = fault(exc)
            if known is None:
                print_error(f"unexpected {type(exc).__name__}: {exc} (set CARCLI_DEBUG=1 for the traceback)")
            else:
                print_error(str(known))
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return plain_metavars(super().get_params(ctx), ctx)
