"""The `flexidit-trt` command: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import json

import click

from . import __version__


def _parse_sizes(ctx, param, value: str | None) -> tuple[int, ...] | None:
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


@main.command()
@click.option(
    "--model", "model_name", default="dit_xl", show_default=True, help="dit_s, dit_b, dit_l, dit_xl"
)
@click.option("--image-size", type=int, default=256, show_default=True, help="pixels (latent = size / 8)")
@click.option("--patch-sizes", callback=_parse_sizes, default="2,4", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(model_name: str, image_size: int, patch_sizes: tuple[int, ...], as_json: bool) -> None:
    """Parameters, tokens and GMACs per patch size (computed from the config)."""
    from .info import model_info
    from .model.config import get_config

    if image_size % 8:
        raise click.BadParameter(f"image size {image_size} is not a multiple of 8 (the VAE's factor)")
    try:
        config = get_config(model_name, input_size=image_size // 8, patch_sizes=patch_sizes)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    facts = model_info(config)
    if as_json:
        click.echo(json.dumps(facts.to_dict(), indent=2))
        return
    click.echo(
        f"{facts.name}: depth {facts.depth}, hidden {facts.hidden_size}, {facts.num_heads} heads, "
        f"latent {facts.input_size}x{facts.input_size}"
    )
    click.echo(
        f"parameters: {facts.base_parameters / 1e6:.1f} M (reference layout), "
        f"{facts.total_parameters / 1e6:.1f} M with every patch size"
    )
    click.echo(f"{'patch':>5} {'tokens':>7} {'GMACs':>8} {'vs base':>8}")
    for p in facts.patches:
        click.echo(f"{p.patch_size:>5} {p.tokens:>7} {p.gmacs:>8.2f} {p.relative_cost:>8.3f}")


if __name__ == "__main__":
    main()
