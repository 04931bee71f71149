"""The `flexidit-trt` command group and the option parsers its subcommands share."""

from __future__ import annotations

import click

from .. import __version__


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flexidit-trt")
def main() -> None:
    """FlexiDiT inference: one DiT, several patch sizes, one engine per patch size."""
