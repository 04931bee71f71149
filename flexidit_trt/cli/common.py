"""The `flexidit-trt` command group and the option parsers its subcommands share."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import FlexiditError, UsageError


@contextmanager
def one_line_errors(ctx: click.Context) -> Iterator[None]:
    """The one place the CLI maps library errors: a UsageError (an option or input to change) exits 2
    with the command's usage, any other FlexiditError exits 1; both print their one-line message. Ctrl-C
    exits 130 (the shell's code for SIGINT) with one line: every command writes its outputs atomically, so
    what was interrupted left nothing half-written."""
    try:
        yield
    except UsageError as err:
        raise click.UsageError(str(err), ctx) from None
    except FlexiditError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: nothing half-written was left", err=True)
        ctx.exit(130)


class Command(click.Command):
    """A command whose library errors go through `one_line_errors`."""

    def invoke(self, ctx: click.Context):
        with one_line_errors(ctx):
            return super().invoke(ctx)


class Group(click.Group):
    """A command group (its own callback too) whose commands and subgroups map errors the same way."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        with one_line_errors(ctx):
            return super().invoke(ctx)


Group.group_class = Group


class FiniteFloat(click.FloatRange):
    """A float option that must be a finite number (click's float takes "nan" and "inf", which no option
    here can use), within an optional range as click.FloatRange has it."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.types.FloatParamType.convert(self, value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()


def parse_sizes(ctx, param, value: str | None) -> tuple[int, ...] | None:
    """click callback: "1,2,4" → (1, 2, 4), positive integers only."""
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated positive integers, got {value!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise click.BadParameter(f"expected comma-separated positive integers, got {value!r}")
    return sizes


def workdir_option() -> Callable:
    """--workdir: the folder `build` writes its artifacts under and `run` reads them from."""
    return click.option(
        "--workdir", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True
    )


def sizes_option(name: str, default: str, help: str | None = None) -> Callable:
    """An option of comma-separated positive integers (--patch-sizes, --batch-sizes), its default shown."""
    return click.option(name, callback=parse_sizes, default=default, show_default=True, help=help)


def path_option(name: str, help: str, default: Path | None = None, **checks: bool) -> Callable:
    """A path option; `checks`: click.Path's (exists=True, file_okay=False, dir_okay=False)."""
    return click.option(name, type=click.Path(path_type=Path, **checks), default=default, help=help)


def checkpoint_option(help: str) -> Callable:
    """--checkpoint: an existing weights file or folder."""
    return click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None, help=help)


def precision_option(choices: Sequence[str], default: str | None, **extra: Any) -> Callable:
    """--precision: one of `choices` (listed in this order by --help)."""
    return click.option("--precision", type=click.Choice(list(choices)), default=default, **extra)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flexidit-trt")
def main() -> None:
    """FlexiDiT inference: one DiT, several patch sizes, one engine per patch size."""
