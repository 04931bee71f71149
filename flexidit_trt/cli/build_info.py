"""`flexidit-trt info` and `flexidit-trt build`.

Exit codes: 2 for bad usage (an unknown model, a size that does not fit, options that contradict the
checkpoint: click.UsageError / BadParameter, from the library's OptionError), 1 for a failure of the
work itself (an unreadable checkpoint, a failed validation, an unwritable folder: ClickException).
"""

from __future__ import annotations

import json

import click

from ..engines.aoti import AOTI_VARIANTS
from .common import checkpoint_option, main, path_option, precision_option, sizes_option, workdir_option

MODEL_NAMES = "dit_s, dit_b, dit_l, dit_xl, dit_fmnist (the embedded default model's config)"


@main.command()
@click.option("--model", "model_name", default="dit_xl", show_default=True, help=MODEL_NAMES)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="pixels (latent = size / 8; pixel-space dit_fmnist: the size itself)  [default: the model's, 256 "
    "for the DiTs, 32 for dit_fmnist]",
)
@sizes_option("--patch-sizes", "2,4")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(model_name: str, image_size: int | None, patch_sizes: tuple[int, ...], as_json: bool) -> None:
    """Parameters, tokens and GMACs per patch size (computed from the config)."""
    from ..export.source import latent_size
    from ..info import model_info
    from ..model.config import get_config

    try:
        base = get_config(model_name)
        size = base.image_size if image_size is None else image_size
        config = get_config(
            model_name, input_size=latent_size(size, base.pixels_per_latent), patch_sizes=patch_sizes
        )
    except ValueError as err:  # an unknown name or patch size (a bad image size: OptionError, exit 2 too)
        raise click.UsageError(str(err)) from None
    facts = model_info(config)
    if as_json:
        click.echo(json.dumps(facts.to_dict(), indent=2))
        return
    click.echo(
        f"{facts.name}: depth {facts.depth}, hidden {facts.hidden_size}, {facts.num_heads} heads, "
        f"{'latent' if config.pixels_per_latent > 1 else 'pixel-space input'} {facts.input_size}x{facts.input_size}"
    )
    click.echo(
        f"parameters: {facts.base_parameters / 1e6:.1f} M (reference layout), "
        f"{facts.total_parameters / 1e6:.1f} M with every patch size"
    )
    click.echo(f"{'patch':>5} {'tokens':>7} {'GMACs':>8} {'vs base':>8}")
    for p in facts.patches:
        click.echo(f"{p.patch_size:>5} {p.tokens:>7} {p.gmacs:>8.2f} {p.relative_cost:>8.3f}")


@main.command()
@click.option(
    "--model",
    "model_name",
    default=None,
    help=f"{MODEL_NAMES}; dit_fmnist without --checkpoint builds the embedded default weights  "
    "[default: dit_xl, or the checkpoint's]",
)
@checkpoint_option(
    "official DiT .pt, diffusers folder or flexible .safetensors  [default: seeded random weights]"
)
@sizes_option("--patch-sizes", "2,4", "one graph and engine each")
@sizes_option("--batch-sizes", "1,2,4,8,16", "image batches the engines serve (with --cfg also twice each)")
@precision_option(["fp16", "bf16", "fp32"], "fp16", show_default=True)
@click.option(
    "--fp32-residual", is_flag=True, help="keep embedders, adaLN modulation, gates and the residual in fp32"
)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="pixels  [default: the model's (256; 32 for dit_fmnist), or the checkpoint's]",
)
@click.option(
    "--opset",
    type=int,
    default=17,
    show_default=True,
    help="ONNX opset, 17 up to what torch and the TensorRT table allow",
)
@workdir_option()
@click.option(
    "--require-trt", is_flag=True, help="fail instead of skipping when TensorRT engines cannot be built"
)
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=3,
    show_default=True,
    help="TensorRT builder optimization level",
)
@click.option(
    "--profiles",
    "profile_mode",
    type=click.Choice(["ranges", "exact"]),
    default="ranges",
    show_default=True,
    help="adjacent batch ranges (opt = max), or one static profile per batch",
)
@click.option(
    "--cfg/--no-cfg",
    "guidance",
    default=True,
    show_default=True,
    help="also cover twice each batch (guided passes)",
)
@path_option("--timing-cache", "[default: in the engine folder]", dir_okay=False)
@click.option("--force", is_flag=True, help="rebuild every graph and engine")
@click.option("--revalidate", is_flag=True, help="rerun the ONNX Runtime comparison on reused graphs")
@click.option(
    "--aoti",
    is_flag=True,
    help="also compile one AOTInductor package per patch size for this GPU (runs without TensorRT)",
)
@click.option(
    "--aoti-variant",
    type=click.Choice(list(AOTI_VARIANTS)),
    default=None,
    help="AOTInductor compile variant (engines/aoti.py)  [default: $FLEXIDIT_AOTI_VARIANT or default]",
)
@click.option(
    "--aoti-gelu-epilogue/--no-aoti-gelu-epilogue",
    default=None,
    help="AOTInductor packages run each MLP's fc1 + GELU as one cuBLASLt GEMM with a GELU epilogue  "
    "[default: on for bf16/fp16]",
)
@click.option(
    "--compile-cache",
    is_flag=True,
    help="also compile the torch backend at every engine batch on this GPU and save torch.compile's portable "
    "cache, which `run --compile` loads (a cold compile of DiT-XL takes about a minute)",
)
def build(model_name: str | None, aoti: bool, compile_cache: bool, **options) -> None:
    """Export one ONNX graph per patch size (validated), then build one TensorRT engine (and, with
    --aoti, one AOTInductor package) per patch size."""
    from ..build import build_artifacts, report_lines

    engines = ("trt", *(["aoti"] if aoti else []), *(["compile-cache"] if compile_cache else []))
    report = build_artifacts(model_name, engines=engines, say=click.echo, **options)
    for line in report_lines(report):
        click.echo(line)
