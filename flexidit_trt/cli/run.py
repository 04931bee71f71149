"""`flexidit-trt run`: sample with the planner's schedule, one engine per patch size."""

from __future__ import annotations

import json

import click

from .common import FiniteFloat, checkpoint_option, main, path_option, precision_option, workdir_option


def parse_labels(ctx, param, value: str | None) -> tuple[int, ...] | None:
    """click callback: "1,2,3" → (1, 2, 3); class labels are integers >= 0 (the upper bound is the
    model's, checked once it is known)."""
    if value is None:
        return None
    try:
        labels = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated class labels (integers >= 0), got {value!r}"
        ) from None
    negative = [v for v in labels if v < 0]
    if not labels or negative:
        raise click.BadParameter(f"class labels are integers >= 0, got {value!r}")
    return labels


@main.command()
@click.option(
    "--budget",
    type=FiniteFloat(),
    default=None,
    help="fraction of the static model's MACs, (0, 1]  [default: 0.5]",
)
@click.option(
    "--time-budget",
    type=FiniteFloat(min=0.0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="seconds of sampling loop instead of --budget: the weak steps are chosen from the engines' step "
    "latency, measured at the run's batch before sampling",
)
@click.option(
    "--model",
    default=None,
    help="a model config (dit_s, dit_xl, ...): the weights `flexidit-trt build` recorded for it, else "
    "seeded random weights (DiT-XL on a CPU takes hours)  [default: the embedded default]",
)
@checkpoint_option("weights to run (engines built from other weights are refused)")
@workdir_option()
@click.option(
    "--backend", type=click.Choice(["auto", "trt", "aoti", "torch", "ort"]), default="auto", show_default=True
)
@precision_option(["bf16", "fp16", "fp32"], None, help="[default: bf16 on a GPU, fp32 on the CPU]")
@click.option("--steps", type=click.IntRange(min=1), default=250, show_default=True, help="sampler steps")
@click.option("--sampler", type=click.Choice(["ddpm", "ddim", "flow"]), default="ddpm", show_default=True)
@click.option("--cfg-scale", type=FiniteFloat(), default=4.0, show_default=True, help="guidance scale")
@click.option(
    "--guidance", type=click.Choice(["cfg", "weak-to-strong", "none"]), default="cfg", show_default=True
)
@click.option(
    "--class-labels",
    callback=parse_labels,
    default=None,
    help="e.g. 1,2,3, repeated in turn up to --num-images  [default: 0, 1, 2, ...]",
)
@click.option(
    "--num-images", type=click.IntRange(min=1), default=None, help="[default: 10, or one per label]"
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="images per batch  [default: all, up to 64]",
)
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=0, show_default=True)
@path_option("--out", "[default: samples/<timestamp>]")
@path_option("--vae", "local diffusers AutoencoderKL folder (latent models)")
@click.option("--device", default=None, help="cpu, cuda, cuda:N  [default: the first GPU, else cpu]")
@click.option("--compile", is_flag=True, help="torch backend: torch.compile the engines")
@click.option(
    "--precompute-modulation",
    is_flag=True,
    help="torch backend: every step's adaLN modulation computed before the loop, in one pass (1.6-4.5% faster "
    "with --compile on an H200; holds steps x 2 x batch x (6 x depth + 2) x hidden values per patch size, "
    "1.6 GB for DiT-XL at 8 images)",
)
@click.option("--json", "as_json", is_flag=True, help="print the run record as JSON")
def run(as_json: bool, **options) -> None:
    """Sample images, switching between one engine per patch size mid-trajectory."""
    from ..runtime.run import RunOptions
    from ..runtime.run import run as run_samples

    opts = RunOptions(**options, progress=None if not as_json else False)
    say = (lambda line: None) if as_json else click.echo
    summary = run_samples(opts, say=say)
    if as_json:
        click.echo(json.dumps(summary.result.record, indent=2, sort_keys=True, default=str))
        return
    for line in summary.lines:
        click.echo(line)
